"""One module per feature group: pure functions from raw or validated frames to feature rows."""
