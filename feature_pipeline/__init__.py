"""Feature pipeline: Extract, Validate, Aggregate, Compress + model-independent transforms (MIT).

Reads raw departures, weather and planes, validates them against the feature groups' data
contracts, computes point-in-time-safe aggregates and upserts everything into the feature store.
"""
