"""The named, versioned de-identification profile: Table E.1-1's basic profile plus a set of its options."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import cache, cached_property
from typing import TYPE_CHECKING

from airflow_provider_kaapana.core.deid import table

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

PROFILE_NAME = "kaapana-ps3.15-e1-1"
PROFILE_VERSION = "1"


class Option(str, Enum):
    """Options of the Basic Application Level Confidentiality Profile this package applies.

    The value is the CLI spelling; the Table E.1-1 column is the value with ``_`` for ``-``.
    Clean Pixel Data and Clean Recognizable Visual Features are not offered: pixels are never altered.
    """

    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"

    @property
    def column(self) -> str:
        return self.value.replace("-", "_")

    @property
    def code(self) -> Code:
        """Its CID 7050 code (from pydicom's copy of the DICOM code tables)."""
        return _option_code(self)


# CID 7050 concept names in pydicom's copy of the DICOM code tables (imported on first use: it is slow)
_CODE_NAMES = {
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "RetainLongitudinalTemporalInformationFullDatesOption",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "RetainLongitudinalTemporalInformationModifiedDatesOption",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "RetainPatientCharacteristicsOption",
    Option.RETAIN_DEVICE_IDENTITY: "RetainDeviceIdentityOption",
    Option.RETAIN_INSTITUTION_IDENTITY: "RetainInstitutionIdentityOption",
    Option.RETAIN_UIDS: "RetainUidsOption",
    Option.RETAIN_SAFE_PRIVATE: "RetainSafePrivateOption",
    Option.CLEAN_DESCRIPTORS: "CleanDescriptorsOption",
    Option.CLEAN_STRUCTURED_CONTENT: "CleanStructuredContentOption",
    Option.CLEAN_GRAPHICS: "CleanGraphicsOption",
}


@cache
def _option_code(option: Option) -> Code:
    # a Collection look-up searches pydicom's tables (~1 ms): once per option, not once per profile
    return getattr(_cid7050(), _CODE_NAMES[option])


def _cid7050():  # noqa: ANN202 - pydicom's Collection type
    from pydicom.sr.codedict import codes

    return codes.cid7050


@cache
def basic_profile_code() -> Code:
    """CID 7050 113100 Basic Application Confidentiality Profile."""
    return _cid7050().BasicApplicationConfidentialityProfile


@dataclass(frozen=True)
class DeidentificationProfile:
    """Basic profile + ``options``.

    ``safe_private``: private attributes kept under Retain Safe Private, as
    ``(private creator, group, element low byte)``, e.g. ``("GEMS_ACQU_01", 0x0019, 0x23)``
    (:mod:`~airflow_provider_kaapana.core.deid.safe_private` reads them from JSON); with the option and
    no list, PS3.15 Table E.3.10-1. Every other private attribute is removed, with or without the
    option; a list without the option raises ValueError (it would be silently ignored).
    ``allow_burned_in_annotation``: pass images that may show burned-in text (``BurnedInAnnotation``
    YES, ultrasound, secondary capture) unchanged instead of refusing them; the pixels are not cleaned,
    so the caller vouches for them and no Clean Pixel Data code is recorded.
    """

    options: frozenset[Option] = frozenset()
    safe_private: frozenset[tuple[str, int, int]] = field(default_factory=frozenset)
    allow_burned_in_annotation: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", frozenset(Option(o) for o in self.options))
        safe = frozenset((str(c).strip(), int(g), int(e)) for c, g, e in self.safe_private)
        if Option.RETAIN_SAFE_PRIVATE in self.options and not safe:
            from airflow_provider_kaapana.core.deid.safe_private import standard_safe_private

            safe = standard_safe_private()
        elif safe and Option.RETAIN_SAFE_PRIVATE not in self.options:
            raise ValueError(
                f"a safe private list ({len(safe)} attributes) needs the option {Option.RETAIN_SAFE_PRIVATE.value}"
            )
        object.__setattr__(self, "safe_private", safe)
        both = {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
        if both <= self.options:
            raise ValueError(
                "Retain Longitudinal Temporal Information: choose Full Dates or Modified Dates, not both"
            )

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...], **kwargs: object) -> DeidentificationProfile:
        """A profile from CLI option names (``clean-descriptors``...); an unknown name raises ValueError."""
        known = {o.value for o in Option}
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown de-identification option(s) {bad}; known: {sorted(known)}")
        return cls(frozenset(Option(n) for n in names), **kwargs)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return PROFILE_NAME

    @property
    def version(self) -> str:
        """Our version of the rules and the PS3.15 edition of the table."""
        return f"{PROFILE_VERSION} ({table.edition()})"

    def has(self, option: Option) -> bool:
        return option in self.options

    @cached_property
    def actions(self) -> dict[str, str]:
        """Table E.1-1 row (hex tag or mask) -> action code under this profile."""
        return table.resolve_actions(frozenset(o.column for o in self.options))

    @cached_property
    def method_codes(self) -> list[Code]:
        """CID 7050 codes for De-identification Method Code Sequence: the profile, then its options."""
        ordered = sorted(self.options, key=lambda o: o.code.value)
        return [basic_profile_code(), *(o.code for o in ordered)]

    @cached_property
    def method_description(self) -> str:
        """De-identification Method (LO, at most 64 characters)."""
        return f"{PROFILE_NAME} v{PROFILE_VERSION}"
