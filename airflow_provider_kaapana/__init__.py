"""Medical-imaging processing for Apache Airflow (DICOM, search indexing, NIfTI, nnU-Net, DICOM SEG).

The package is split so that the core (``airflow_provider_kaapana.core``) never imports Airflow:
the ``kaapana`` CLI, the container entrypoints and the operators all call the same core functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
