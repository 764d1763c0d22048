"""The words a monitoring run answers with, in one place: every module that decides, renders or
exports a status compares against these, never against a literal."""

from __future__ import annotations

# A feature in the drift report (see drift.py for the rule), and the predictions' histogram.
DRIFT = "drift"  # significant, large and unusual: counts toward the drifted share
WARN = "warn"  # significant and at least the warning PSI, not unusual enough to be drift
USUAL = "usual"  # significant, but no larger than the training period's own windows
OK = "ok"
ABSENT = "absent"  # in the reference, not in the window: not tested
NO_REFERENCE = "no_reference"  # the reference holds no values of it: not tested
TOO_FEW = "too_few"  # too few values to test
TESTED = (DRIFT, WARN, USUAL, OK)

# A monitoring run (its exit code: 3 for DRIFT, 0 for HEALTHY).
HEALTHY = "healthy"

# The quality of a window (or a day) on its delayed labels.
MEASURED = "ok"
ONE_CLASS = "one class only"  # every labelled flight on one side: no ROC AUC
NOT_ENOUGH_LABELS = "not enough labels yet"
