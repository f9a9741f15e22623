"""Label maps to DICOM SEG: place labels on the source grid, code the segments, write the object."""
