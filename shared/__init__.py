"""Code the three pipelines have in common: feature store, feature definitions, transforms,
registry client and settings. Nothing here imports a pipeline."""
