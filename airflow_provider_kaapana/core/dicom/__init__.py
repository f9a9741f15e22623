"""DICOM primitives: the UID rule, the one encoded-dataset walker, header reading, atomic file writes."""
