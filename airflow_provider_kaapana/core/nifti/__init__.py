"""DICOM series to NIfTI: scan the headers, check the geometry, read the pixels, write the volume."""
