"""The search index: one document per series, the index template, the client, cohorts, dashboards."""

# here rather than in .template, so that the ``kaapana`` command can name it without importing pydicom
DEFAULT_INDEX = "kaapana-dicom"
