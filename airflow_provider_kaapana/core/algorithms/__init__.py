"""Bring your own algorithm: manifests (load, validate, install) and the container contract's local runner.

Airflow-free. :mod:`.manifest` reads and validates ``kaapana.algorithm/v1`` manifests against the JSON
Schema shipped in ``data/``; :mod:`.contract` prepares a job folder (parameters, series metadata),
runs the command locally and collects the declared outputs. See ``docs/guides/algorithms.rst``.
"""
