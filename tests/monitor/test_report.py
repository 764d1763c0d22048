"""The HTML report's drift table, read back as a browser would: every header names the cell
under it, and categorical bins are shown in their natural order."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from inference_pipeline.monitor.drift import MISSING
from inference_pipeline.monitor.report import render_html

pytestmark = pytest.mark.unit


class Tables(HTMLParser):
    """Every <table> as [header cells, *rows], cell text stripped; plus the SVG texts of each
    distribution card, by card id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cards: dict[str, list[str]] = {}
        self._cell: list[str] | None = None
        self._card: str | None = None
        self._in_text = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self._cell = []
        elif tag == "div" and (dict(attrs).get("id") or "").startswith("f-"):
            self._card = str(dict(attrs)["id"])[2:]
            self.cards[self._card] = []
        elif tag == "text":
            self._in_text = True
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "text":
            self._in_text = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_text and self._in_title and self._card is not None:
            self.cards[self._card].append(data)  # a bar's full label


def _feature(name: str, kind: str, status: str, **values: Any) -> dict[str, Any]:
    return {
        "feature": name, "kind": kind, "status": status, "drifted": status == "drift",
        "test": "ks" if kind == "numeric" else "chi2", "statistic": 0.1234, "p_value": 0.0012,
        "missing_p_value": 0.5, "psi": 0.3456, "baseline_psi": 0.2345, "rows": 2000,
        "values": 1234, "null_fraction_reference": 0.015, "null_fraction_current": 0.025,
        "ood_rate": 0.035, "reference_mean": None, "current_mean": None,
        "bins": [], "reference_fractions": [], "current_fractions": [], "note": "a note",
        **values,
    }  # fmt: skip


HOURS = ["10", "11", "5", "6", "9", "23"]  # as text-sorted keys of a stored reference come


def _result() -> dict[str, Any]:
    features = [
        _feature(
            "sched_hour", "categorical", "drift",
            bins=[*HOURS, "7", MISSING],  # "7": unseen in training, appended by the drift step
            reference_fractions=[0.2, 0.1, 0.3, 0.1, 0.2, 0.1, 0.0, 0.0],
            current_fractions=[0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1],
        ),
        _feature(
            "wx_temp", "numeric", "ok", psi=0.01, baseline_psi=None, ood_rate=0.0, note=None,
            bins=["<= 30", "30-60", "> 60", MISSING],
            reference_fractions=[0.3, 0.4, 0.3, 0.0], current_fractions=[0.2, 0.5, 0.3, 0.0],
        ),
    ]  # fmt: skip
    return {
        "model": {"name": "flight_delay", "version": "3", "ref": "champion",
                  "data_end": "2013-06-30", "age_days": 7},
        "window": {"start": "2013-07-01", "end": "2013-07-07", "days": 7, "source": "all"},
        "status": "drift",
        "generated_at": "2013-07-08T04:30:00+00:00",
        "predictions": {"rows": 2000, "flights": 2000, "by_version": {"3": 2000},
                        "by_source": {"batch": 2000}},
        "drift": {"features": features, "drifted": 1, "tested": 2, "share": 0.5,
                  "threshold_share": 0.3, "warned": 0, "absent_features": [],
                  "baseline": {"used": True, "quantile": 0.95, "training_window": "2013-01..06",
                               "training_rows": 160000}},
        "ood": {"row_rate": 0.01},
        "prediction_drift": None,
        "quality": None,
        "retrain": {"fire": True, "reasons": ["data drift"]},
        "alerts": ["data drift: 1 of 2 features"],
        "notes": [],
        "versions": [],
        "thresholds": {"p_value": 0.01, "psi_drift": 0.2, "psi_warn": 0.1,
                       "retrain": {"drift_share": 0.3, "auc_drop": 0.05, "min_labels": 500,
                                   "max_age_days": 0}},
    }  # fmt: skip


def _drift_table(html: str) -> list[dict[str, str]]:
    parser = Tables()
    parser.feed(html)
    table = next(t for t in parser.tables if t[0][:2] == ["feature", "kind"])
    header, *rows = table
    for row in rows:
        assert len(row) == len(header), f"{len(header)} headers for {len(row)} cells: {row}"
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_every_drift_column_shows_its_own_value() -> None:
    rows = _drift_table(render_html(_result()))
    assert [r["feature"] for r in rows] == ["sched_hour", "wx_temp"]  # drifted first
    assert rows[0] == {
        "feature": "sched_hour",
        "kind": "categorical",
        "status": "drift",
        "test": "chi2",
        "statistic": "0.1234",
        "p-value": "0.0012",
        "PSI": "0.3456",
        "usual PSI": "0.2345",
        "null ref": "1.5%",
        "null now": "2.5%",
        "out of range / unseen": "3.5%",
        "values": "1,234",
        "note": "a note",
    }
    assert (rows[1]["usual PSI"], rows[1]["out of range / unseen"], rows[1]["note"]) == (
        "-",
        "0.0%",
        "",
    )


def test_categorical_bins_are_shown_in_natural_order() -> None:
    parser = Tables()
    parser.feed(render_html(_result()))
    assert parser.cards["sched_hour"] == ["5", "6", "7", "9", "10", "11", "23", MISSING]
    assert parser.cards["wx_temp"] == ["<= 30", "30-60", "> 60", MISSING]  # as binned


def test_a_table_whose_rows_do_not_match_its_headers_is_refused() -> None:
    from inference_pipeline.monitor.report import _table

    with pytest.raises(ValueError, match=r"\[3\] cells for 2 headers"):
        _table(["a", "b"], [["1", "2", "3"]])
