"""The search index: one document per series, the index template, the client, cohorts, dashboards."""
