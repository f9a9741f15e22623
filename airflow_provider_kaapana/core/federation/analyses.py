"""The analyses this package implements, by name and version: what a site can run and a coordinator ask for."""

from __future__ import annotations

from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1
from airflow_provider_kaapana.core.federation.measurements import SEGMENT_MEASUREMENTS_V1
from airflow_provider_kaapana.core.federation.segmentation import SEGMENTATION_STATISTICS_V1
from airflow_provider_kaapana.core.federation.statistics import AnalysisSpec
from airflow_provider_kaapana.exceptions import UnknownAnalysisError

_ANALYSES: dict[tuple[str, str], AnalysisSpec] = {}


def register_analysis(spec: AnalysisSpec) -> None:
    """Add an analysis version; an existing (name, version) may not be redefined."""
    key = (spec.name, spec.version)
    if key in _ANALYSES and _ANALYSES[key] != spec:
        raise ValueError(f"analysis {spec.name} version {spec.version} is already registered")
    _ANALYSES[key] = spec


def get_analysis(name: str, version: str) -> AnalysisSpec:
    """The analysis ``name`` at ``version``; :class:`UnknownAnalysisError` when it is not implemented."""
    try:
        return _ANALYSES[(name, version)]
    except (KeyError, TypeError):
        known = ", ".join(f"{n} v{v}" for n, v in sorted(_ANALYSES))
        raise UnknownAnalysisError(
            f"analysis {name!s:.64} version {version!s:.16} is not implemented here (known: {known})"
        ) from None


def list_analyses() -> list[AnalysisSpec]:
    return [_ANALYSES[key] for key in sorted(_ANALYSES)]


register_analysis(COHORT_STATISTICS_V1)
register_analysis(SEGMENTATION_STATISTICS_V1)
register_analysis(SEGMENT_MEASUREMENTS_V1)

__all__ = ["get_analysis", "list_analyses", "register_analysis"]
