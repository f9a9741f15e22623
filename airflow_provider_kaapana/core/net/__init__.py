"""Networking: one retry policy, DIMSE (C-ECHO/FIND/GET/MOVE/STORE), DICOMweb, sending a series."""
