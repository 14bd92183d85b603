"""Core: the catalog of datasets, models and pipelines, and the runs that tie the mesh together."""
