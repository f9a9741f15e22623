"""Exceptions raised by the core, hooks and operators. Each names the file, UID or server involved."""

from __future__ import annotations


class KaapanaError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidUIDError(KaapanaError, ValueError):
    """A string that should be a DICOM UID is not one (and so must never become a path part)."""


class UnsafePathError(KaapanaError, ValueError):
    """A value from a file or a request cannot be a path component (``..``, separators, NUL, too long...)."""


class RunConfError(KaapanaError, ValueError):
    """A run's input (its conf, a form's values) cannot be used as given: deterministic, so an operator
    fails its task without retries; the message names the keys and what the run gave."""


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


class QuantificationError(KaapanaError):
    """Statistics cannot be reported as asked (e.g. an SR for a label map, or for another SEG)."""


class DeidentificationError(KaapanaError):
    """A dataset cannot be de-identified under the profile; the message names the attribute keyword, never its value."""


class FederationError(KaapanaError):
    """Base class of the federated-analysis errors (jobs, policies, payloads, egress, audit)."""


class InvalidJobError(FederationError, ValueError):
    """A federated job description is malformed; the message names the field."""


class InvalidPolicyError(FederationError, ValueError):
    """A site policy (an Airflow connection's extra JSON) is malformed; the message names the field."""


class UnknownAnalysisError(FederationError, LookupError):
    """No analysis of that name and version is implemented here."""


class PayloadSchemaError(FederationError, ValueError):
    """A result document does not follow its payload schema; the message names the statistic and key.

    Values are never echoed: a malformed document may carry exactly what must not reach a log.
    """


class EgressRefused(FederationError):
    """The egress guard refuses to let a result document leave the site.

    ``code`` is a short category (``policy``, ``schema``, ``identifier``, ``size``, ``budget``) that is
    safe to send to the coordinator; the message names the statistic and the reason, never the value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[EgressRefused], tuple[str, str]]:  # picklable across processes
        return (type(self), (self.code, str(self)))


class AuditLogError(FederationError):
    """The egress audit log is unreadable or a record's hash does not match its payload."""
