"""The daily flow on Dagster: feature run -> batch scoring / monitoring -> retraining.

Each task calls one pipeline's CLI (``python -m feature_pipeline ...``, or the pipeline's image
through ``docker compose run``); this package imports none of the pipelines. Load it with
``dagster dev -m orchestration`` (UI, schedule, backfills) or run days with
``python -m orchestration``. See docs/operations.md, "The daily DAG".
"""

from orchestration.definitions import defs

__all__ = ["defs"]
