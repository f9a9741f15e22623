"""Exceptions raised by the core, hooks and operators. Each names the file, UID or server involved."""

from __future__ import annotations


class KaapanaError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidUIDError(KaapanaError, ValueError):
    """A string that should be a DICOM UID is not one (and so must never become a path part)."""


class InvalidDicomError(KaapanaError):
    """A file or dataset is not usable DICOM; the message names the file or UID and what is wrong."""


class GeometryError(KaapanaError):
    """A series' geometry cannot be turned into one volume (uneven spacing, tilt, mixed orientation...)."""


class PacsError(KaapanaError):
    """A PACS operation failed after its retries; the message names the PACS and the operation."""


class SearchIndexError(KaapanaError):
    """Indexing or querying the search server failed after its retries."""


class ModelError(KaapanaError):
    """An nnU-Net model folder or export is missing something it needs."""


class NoFindingsError(KaapanaError):
    """A segmentation contains no labelled voxel at all: nothing to export."""


class DeidentificationError(KaapanaError):
    """A dataset cannot be de-identified under the profile; the message names the attribute keyword, never its value."""
