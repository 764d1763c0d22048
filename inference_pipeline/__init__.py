"""Inference pipelines: the online service, the nightly batch job, Triton serving and
monitoring. Imports `shared` only, never the feature or training pipeline."""
