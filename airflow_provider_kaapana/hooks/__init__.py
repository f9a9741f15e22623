"""Hooks own connections and every byte on the wire (PACS: DIMSE + DICOMweb; search server)."""
