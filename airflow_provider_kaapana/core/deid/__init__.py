"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

``deidentify.deidentify(dataset, profile, key)`` applies Table E.1-1 (``table``, generated from a
machine-readable copy of the standard) under a ``profile.DeidentificationProfile``, with keyed
pseudonyms (``pseudonyms``); ``files.deidentify_folder`` is the file-level step of the CLI and the
operator. The package imports nothing itself, so that ``kaapana --help`` stays fast.
"""
