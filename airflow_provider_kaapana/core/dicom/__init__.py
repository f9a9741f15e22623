"""DICOM primitives: the UID rule, the one element walker, received datasets and their file meta."""
