"""The HTML report of a monitoring run: one self-contained file a person can read.

No scripts, no fonts, no CDN: inline CSS and inline SVG plots drawn here, so the file opens
anywhere, offline, and can be attached to a ticket. It renders ``MonitorResult.to_dict()`` only,
so a stored JSON result can be rendered again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any, TypeGuard

from inference_pipeline.monitor.drift import MISSING, families_text, share_text
from inference_pipeline.monitor.status import (
    ABSENT,
    DRIFT,
    HEALTHY,
    MEASURED,
    NO_REFERENCE,
    OK,
    USUAL,
    WARN,
)

REFERENCE_COLOUR = "#4c78a8"
CURRENT_COLOUR = "#f58518"
STATUS_COLOURS = {
    DRIFT: "#d62728",
    WARN: "#ff9f1c",
    OK: "#2ca02c",
    USUAL: "#17becf",
    HEALTHY: "#2ca02c",
    ABSENT: "#7f7f7f",
    NO_REFERENCE: "#7f7f7f",
}
MAX_CATEGORIES = 12  # bars per categorical plot; the rest are summed into one bar
STATUS_ORDER = {DRIFT: 0, WARN: 1, ABSENT: 2, USUAL: 3, OK: 4, NO_REFERENCE: 5}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;width:360px}
.card h3{font-size:14px;margin:0 0 4px 0}.muted{color:#666;font-size:12px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
ul.alerts li{margin:4px 0}
"""


def render_html(result: Mapping[str, Any]) -> str:
    """The whole report as one HTML document."""
    model = result["model"]
    window = result["window"]
    title = (
        f"Monitoring {model['name']} v{model['version']} ({model['ref']}): flights "
        f"{window['start']} to {window['end']}, source {window['source']}"
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{_badge(result['status'])} <span class='muted'>generated "
        f"{escape(result['generated_at'])}</span></p>",
        _summary_section(result),
        _drift_table_section(result),
        _prediction_section(result),
        _quality_section(result),
        _versions_section(result),
        segment_section(result.get("segments")),
        shadow_section(result.get("shadow")),
        _distribution_section(result),
        _rule_section(result),
        "</body></html>",
    ]
    return "\n".join(parts)


# -- sections ------------------------------------------------------------------------------


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#7f7f7f")
    return f"<span class='badge' style='background:{colour}'>{escape(status.upper())}</span>"


def _summary_section(result: Mapping[str, Any]) -> str:
    drift = result["drift"]
    quality = result.get("quality") or {}
    window = quality.get("window") or {}
    test = quality.get("test") or {}
    predicted = result.get("prediction_drift") or {}
    retrain = result["retrain"]
    alerts = result["alerts"] or ["none: no drift detected, quality within the policy"]
    rows = [
        ("predictions in the window", f"{result['predictions']['rows']:,}"),
        ("flights (each counted once)", f"{result['predictions']['flights']:,}"),
        ("by model version", _pairs(result["predictions"]["by_version"])),
        ("by source", _pairs(result["predictions"]["by_source"])),
        (
            "features drifted",
            f"{share_text(drift)}; drift above {drift['threshold_share']:.0%}",
        ),
        ("drifted families (drifted / tested)", families_text(drift)),
        ("features with a warning", str(drift["warned"])),
        ("absent from the logged features", ", ".join(drift["absent_features"]) or "none"),
        ("out-of-distribution flights", _share(result["ood"]["row_rate"])),
        ("prediction PSI", _num(predicted.get("psi"))),
        ("window ROC AUC / test", f"{_num(window.get('roc_auc'))} / {_num(test.get('roc_auc'))}"),
        (
            "window log loss / test",
            f"{_num(window.get('log_loss'))} / {_num(test.get('log_loss'))}",
        ),
        ("labelled flights", _labelled(window)),
        ("model data ends / age", f"{model_end(result)} / {_days(result['model']['age_days'])}"),
        ("retraining recommended", "yes" if retrain["fire"] else "no"),
    ]
    items = "".join(f"<li>{escape(a)}</li>" for a in alerts)
    notes = "".join(f"<li>{escape(n)}</li>" for n in result.get("notes") or [])
    return (
        "<h2>Summary</h2>"
        + f"<p><b>Alerts</b> (why the status is drift)</p><ul class='alerts'>{items}</ul>"
        + (f"<p><b>Notes</b></p><ul class='alerts'>{notes}</ul>" if notes else "")
        + _table(["", "value"], [[escape(k), escape(v)] for k, v in rows], left=2)
    )


def model_end(result: Mapping[str, Any]) -> str:
    return result["model"].get("data_end") or "unknown"


# The drift table, one (header, cell) pair per column: a header can never drift away from its
# values (an earlier table had 12 headers for 13 cells, each column from "null ref" on showing
# its neighbour's value).
DRIFT_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("feature", lambda r: f"<a href='#f-{escape(r['feature'])}'>{escape(r['feature'])}</a>"),
    ("kind", lambda r: escape(r["kind"])),
    (
        "status",
        lambda r: (
            f"<b style='color:{STATUS_COLOURS.get(r['status'], '#7f7f7f')}'>"
            f"{escape(r['status'])}</b>"
        ),
    ),
    ("test", lambda r: escape(r["test"] or "")),
    ("statistic", lambda r: _num(r["statistic"])),
    ("p-value", lambda r: _p(r["p_value"])),
    ("PSI", lambda r: _num(r["psi"])),
    ("usual PSI", lambda r: _num(r["baseline_psi"])),
    ("null ref", lambda r: _share(r["null_fraction_reference"])),
    ("null now", lambda r: _share(r["null_fraction_current"])),
    ("out of range / unseen", lambda r: _share(r["ood_rate"])),
    ("values", lambda r: f"{r['values']:,}"),
    ("note", lambda r: escape(r["note"] or "")),
)


def _drift_table_section(result: Mapping[str, Any]) -> str:
    header = [name for name, _ in DRIFT_COLUMNS]
    rows = [
        [cell(row) for _, cell in DRIFT_COLUMNS] for row in _ordered(result["drift"]["features"])
    ]
    baseline = result["drift"].get("baseline") or {}
    if baseline.get("used"):
        text = (
            f"'usual PSI': the {baseline['quantile']:.0%} quantile of the PSI of every window of "
            f"{result['window']['days']} days inside the training split "
            f"{baseline['training_window']} ({baseline['training_rows']:,} flights); a feature "
            "only drifts above it."
        )
    else:
        text = f"No training-period baseline: {baseline.get('reason', '')}."
    return (
        "<h2>Data drift per feature</h2>"
        + f"<p class='muted'>{escape(text)}</p>"
        + _table(header, rows, left=4)
    )


def _prediction_section(result: Mapping[str, Any]) -> str:
    predicted = result.get("prediction_drift")
    if not predicted:
        return (
            "<h2>Prediction drift</h2><p>The monitored version made no predictions in this "
            "window, or its reference holds no prediction histogram.</p>"
        )
    chart = bar_chart(
        predicted["bins"], predicted["reference_fractions"], predicted["current_fractions"]
    )
    text = (
        f"PSI {_num(predicted.get('psi'))}, chi-square p-value {_p(predicted.get('p_value'))}, "
        f"status <b>{escape(str(predicted.get('status')))}</b>; mean probability now "
        f"{_num(predicted.get('current_mean'))}, training about "
        f"{_num(predicted.get('reference_mean_from_bins'))} (from the histogram)."
    )
    return f"<h2>Prediction drift</h2><p>{text}</p>{_legend()}{chart}"


def _quality_section(result: Mapping[str, Any]) -> str:
    quality = result.get("quality")
    if not quality:
        return "<h2>Quality (delayed labels)</h2><p>No predictions of the monitored version.</p>"
    window = quality["window"]
    test = quality.get("test") or {}
    comparison = quality.get("comparison") or {}
    days = quality["days"]
    parts = ["<h2>Quality over time (delayed labels)</h2>"]
    if window.get("status") != MEASURED:
        parts.append(f"<p><b>{escape(str(window.get('status')))}</b>: {_labelled(window)}.</p>")
    else:
        parts.append(
            f"<p>Window: ROC AUC {_num(window['roc_auc'])} (test {_num(test.get('roc_auc'))}, "
            f"drop {_num(comparison.get('roc_auc_drop'))}), log loss {_num(window['log_loss'])} "
            f"(test {_num(test.get('log_loss'))}), Brier {_num(window['brier'])}, "
            f"ECE {_num(window['ece'])}, delay rate {_share(window['base_rate'])} vs mean "
            f"prediction {_share(window['mean_probability'])}.</p>"
        )
    labels = [d["date"] for d in days]
    parts.append("<div class='cards'>")
    for metric, name in (("roc_auc", "ROC AUC"), ("log_loss", "log loss")):
        parts.append(
            f"<div class='card'><h3>{name} per day</h3>"
            + line_chart(labels, [d.get(metric) for d in days], test.get(metric))
            + "<div class='muted'>dashed: the model's test value</div></div>"
        )
    parts.append(
        "<div class='card'><h3>delay rate (orange) vs mean prediction (blue) per day</h3>"
        + line_chart(
            labels,
            [d.get("base_rate") for d in days],
            None,
            second=[d.get("mean_probability") for d in days],
        )
        + "</div>"
    )
    if window.get("status") == MEASURED:
        parts.append(
            "<div class='card'><h3>reliability over the window</h3>"
            + reliability_chart(window["calibration"])
            + "<div class='muted'>dot size: rows per bin; diagonal: perfect calibration</div>"
            "</div>"
        )
    parts.append("</div>")
    header = [
        "date",
        "predictions",
        "outcomes arrived",
        "cancelled",
        "labelled",
        "status",
        "ROC AUC",
        "log loss",
        "Brier",
        "ECE",
        "delay rate",
        "mean prediction",
    ]
    rows = [
        [
            escape(d["date"]),
            f"{d['predictions']:,}",
            f"{d['outcomes_arrived']:,}",
            f"{d['cancelled']:,}",
            f"{d['labelled']:,}",
            escape(d["status"]),
            _num(d.get("roc_auc")),
            _num(d.get("log_loss")),
            _num(d.get("brier")),
            _num(d.get("ece")),
            _share(d.get("base_rate")),
            _share(d.get("mean_probability")),
        ]
        for d in days
    ]
    parts.append(_table(header, rows, left=1))
    return "".join(parts)


def _versions_section(result: Mapping[str, Any]) -> str:
    versions = result["versions"]
    if len(versions) < 2:
        return ""
    header = [
        "version",
        "flights",
        "prediction PSI",
        "prediction status",
        "quality",
        "ROC AUC",
        "test ROC AUC",
        "log loss",
        "note",
    ]
    rows = []
    for v in versions:
        predicted = v.get("prediction_drift") or {}
        window = v["quality"]["window"]
        test = v["quality"].get("test") or {}
        rows.append(
            [
                escape(v["version"]),
                f"{v['flights']:,}",
                _num(predicted.get("psi")),
                escape(str(predicted.get("status", "-"))),
                escape(str(window.get("status"))),
                _num(window.get("roc_auc")),
                _num(test.get("roc_auc")),
                _num(window.get("log_loss")),
                escape(v.get("note") or ""),
            ]
        )
    return (
        "<h2>Model versions in the window</h2><p>Each version against its own training "
        "predictions and test metrics (a rollout, canary or shadow ran in this window).</p>"
        + _table(header, rows, left=1)
    )


MAX_SEGMENT_ROWS = 30  # the segments that fell furthest; the JSON result holds every one


def segment_section(segments: Mapping[str, Any] | None) -> str:
    """Quality and drift per segment, the segments that fell furthest first."""
    if not segments:
        return ""
    against = (
        f"its own ROC AUC on the test window of v{segments['version']}"
        if segments["against"] == "test"
        else "the window's overall ROC AUC (this version recorded no per-segment test metrics)"
    )
    intro = (
        "<h2>Quality and drift per segment</h2><p>The monitored version's predictions per "
        f"carrier, origin, hour-of-day bucket and month. <b>Fell by</b>: how far a segment's ROC "
        f"AUC is below {escape(against)}, with at least {segments['min_labels']:,} labelled "
        "flights; furthest first. Values in brackets are the test window's. Prediction PSI "
        "compares the segment's predictions with its test-window predictions.</p>"
    )
    if segments.get("note"):
        return intro + f"<p class='muted'>{escape(segments['note'])}</p>"
    header = [
        "segment",
        "flights",
        "share (test)",
        "labelled",
        "delay rate (test)",
        "mean prediction (test)",
        "ROC AUC (test)",
        "fell by",
        "log loss (test)",
        "prediction PSI",
        "prediction status",
    ]
    rows = [
        [
            escape(r["name"]),
            f"{r['flights']:,}",
            f"{_share(r['share'])} ({_share(r['reference_share'])})",
            f"{r['labelled']:,}",
            f"{_num(r['base_rate'])} ({_num(r['reference_base_rate'])})",
            f"{_num(r['mean_prediction'])} ({_num(r['reference_mean_prediction'])})",
            f"{_num(r['roc_auc'])} ({_num(r['reference_roc_auc'])})",
            _signed(r["fell_by"]),
            f"{_num(r['log_loss'])} ({_num(r['reference_log_loss'])})",
            _num(r["prediction_psi"]),
            escape(str(r["prediction_status"])),
        ]
        for r in segments["rows"][:MAX_SEGMENT_ROWS]
    ]
    more = len(segments["rows"]) - MAX_SEGMENT_ROWS
    tail = f"<p class='muted'>{more} more segments in the JSON result.</p>" if more > 0 else ""
    return intro + _table(header, rows, left=1) + tail


def shadow_section(shadow: Mapping[str, Any] | None) -> str:
    """The shadow comparison: champion and challenger on the same labelled flights, the rule's
    decision and what was done (the monitoring report and the shadow step's own report)."""
    if not shadow:
        return ""
    intro = (
        "<h2>Shadow decision</h2><p>The challenger in shadow and the champion, each measured on "
        "the labelled flights of the window that <b>both</b> scored.</p>"
    )
    rules = shadow.get("rules") or {}
    rows = [
        ("champion / challenger", f"v{shadow.get('champion')} / v{shadow.get('challenger')}"),
        ("what was done", str(shadow["action"])),
        ("why", str(shadow["reason"])),
    ]
    comparison = shadow.get("comparison")
    if comparison:
        rows += [
            ("labelled flights scored by both", f"{comparison['flights']:,}"),
            (
                "ROC AUC: challenger / champion (gain)",
                f"{_num(comparison['challenger_roc_auc'])} / "
                f"{_num(comparison['champion_roc_auc'])} ({_signed(comparison['auc_gain'])})",
            ),
            (
                "log loss: challenger / champion (increase)",
                f"{_num(comparison['challenger_log_loss'])} / "
                f"{_num(comparison['champion_log_loss'])} "
                f"({_signed(comparison['log_loss_increase'])})",
            ),
        ]
    if rules:
        rows.append(
            (
                "rule",
                f"gate-eligible, ROC AUC gain >= {_signed(rules['min_auc_gain'])}, log loss "
                f"increase <= {_signed(rules['max_log_loss_increase'])}, at least "
                f"{rules['min_labels']:,} labelled flights; automatic promotion "
                f"{'on' if rules.get('automatic_promotion') else 'off'} (FTI_SHADOW_PROMOTE)",
            )
        )
    if shadow.get("challenger") is None:
        rows = [("what was done", str(shadow["action"])), ("why", str(shadow["reason"]))]
    return intro + _table(["", "value"], [[escape(k), escape(v)] for k, v in rows], left=2)


def render_shadow_html(result: Mapping[str, Any]) -> str:
    """The shadow step's own report (``python -m inference_pipeline monitor shadow``)."""
    window = result["window"]
    title = f"Shadow decision, {result['model_name']}: flights {window['start']} to {window['end']}"
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f"<p class='muted'>generated {escape(result['generated_at'])}, "
            f"{window['predictions']:,} predictions in the window</p>",
            shadow_section(result["shadow"]),
            "</body></html>",
        ]
    )


def _distribution_section(result: Mapping[str, Any]) -> str:
    cards = []
    for row in _ordered(result["drift"]["features"]):
        if not row["bins"]:
            continue
        labels, reference, current = _top_bins(*_display_order(row))
        colour = STATUS_COLOURS.get(row["status"], "#7f7f7f")
        cards.append(
            f"<div class='card' id='f-{escape(row['feature'])}'>"
            f"<h3>{escape(row['feature'])} <span style='color:{colour}'>"
            f"{escape(row['status'])}</span></h3>"
            f"<div class='muted'>PSI {_num(row['psi'])}, {escape(row['test'] or '')} p "
            f"{_p(row['p_value'])}, {row['values']:,} values</div>"
            + bar_chart(labels, reference, current)
            + "</div>"
        )
    return (
        "<h2>Distributions: reference (training) vs current (window)</h2>"
        + _legend()
        + f"<div class='cards'>{''.join(cards)}</div>"
    )


def _rule_section(result: Mapping[str, Any]) -> str:
    t = result["thresholds"]
    retrain = t["retrain"]
    age = retrain["max_age_days"]
    return (
        "<h2>How to read this</h2><p>A feature is <b>drifted</b> when its change is significant "
        f"(the smaller p-value of the value test and the missing-rate test, Bonferroni-corrected, "
        f"below {t['p_value']}), large (PSI at least {t['psi_drift']}) <b>and</b> unusual (PSI "
        "above the 'usual PSI' that windows of the same length inside the training split reach: "
        "rows of one week share their weather and rolling statistics, so every week differs "
        "from a whole training period). It is <b>usual</b> when significant and large but "
        f"within that range, a <b>warning</b> when significant with PSI at least "
        f"{t['psi_warn']}. Numeric values are "
        "tested with two-sample Kolmogorov-Smirnov against the training sample and binned on the "
        "training deciles; categorical values with a chi-square test of homogeneity. Both carry "
        "a bin for missing values. Drift is detected when "
        + (
            "the mean over feature families (the group a feature comes from, the fresh window "
            "features, the on-demand features) of each family's share of drifted features is "
            f"above {retrain['drift_share']:.0%}"
            if result["drift"].get("share_by") == "family"
            else f"more than {retrain['drift_share']:.0%} of the tested features drifted"
        )
        + ". Retraining is recommended "
        f"on drift, when the window's ROC AUC is more than {retrain['auc_drop']} below the test "
        f"AUC with at least {retrain['min_labels']} labelled flights"
        + (f", or when the model's data is more than {age} days old" if age else "")
        + ".</p>"
    )


# -- plots (inline SVG) ---------------------------------------------------------------------


def bar_chart(
    labels: Sequence[str], reference: Sequence[float], current: Sequence[float], width: int = 340
) -> str:
    """Horizontal paired bars, one row per bin: reference above, current below."""
    row_height, label_width = 18, 130
    top = max([*reference, *current, 1e-9])
    scale = (width - label_width - 40) / top
    height = row_height * len(labels) + 4
    items = [
        f"<svg width='{width}' height='{height}' role='img' xmlns='http://www.w3.org/2000/svg'>"
    ]
    for i, (label, ref, cur) in enumerate(zip(labels, reference, current, strict=True)):
        y = i * row_height + 2
        short = label if len(label) <= 20 else label[:19] + "…"
        items.append(
            f"<text x='{label_width - 4}' y='{y + 12}' font-size='10' text-anchor='end'>"
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            f"<rect x='{label_width}' y='{y + 1}' width='{ref * scale:.1f}' height='7' "
            f"fill='{REFERENCE_COLOUR}'><title>reference {ref:.2%}</title></rect>"
            f"<rect x='{label_width}' y='{y + 8}' width='{cur * scale:.1f}' height='7' "
            f"fill='{CURRENT_COLOUR}'><title>current {cur:.2%}</title></rect>"
            f"<text x='{label_width + max(ref, cur) * scale + 3:.1f}' y='{y + 12}' "
            f"font-size='9' fill='#555'>{cur:.1%}</text>"
        )
    items.append("</svg>")
    return "".join(items)


def line_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    reference: float | None,
    *,
    second: Sequence[float | None] | None = None,
    width: int = 340,
    height: int = 160,
) -> str:
    """Values per day (gaps where None), an optional second series and a dashed reference."""
    points = [v for v in [*values, *(second or []), reference] if _is_number(v)]
    if not points:
        return "<p class='muted'>nothing to plot yet (not enough labels)</p>"
    low, high = min(points), max(points)
    pad = (high - low) * 0.1 or 0.05
    low, high = low - pad, high + pad
    left, bottom, right, top = 40, height - 20, width - 10, 10
    step = (right - left) / max(len(labels) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + i * step, bottom - (v - low) / (high - low) * (bottom - top)

    items = [
        f"<svg width='{width}' height='{height}' role='img' xmlns='http://www.w3.org/2000/svg'>",
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#999'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='#999'/>",
        f"<text x='{left - 4}' y='{top + 8}' font-size='9' text-anchor='end'>{high:.3g}</text>",
        f"<text x='{left - 4}' y='{bottom}' font-size='9' text-anchor='end'>{low:.3g}</text>",
    ]
    if labels:
        items.append(f"<text x='{left}' y='{height - 4}' font-size='9'>{escape(labels[0])}</text>")
        items.append(
            f"<text x='{right}' y='{height - 4}' font-size='9' text-anchor='end'>"
            f"{escape(labels[-1])}</text>"
        )
    if _is_number(reference):
        _, y = xy(0, float(reference))
        items.append(
            f"<line x1='{left}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#555' "
            "stroke-dasharray='4 3'/>"
        )
    for series, colour in ((values, CURRENT_COLOUR), (second, REFERENCE_COLOUR)):
        if series is None:
            continue
        coords = [(i, v) for i, v in enumerate(series) if _is_number(v)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in coords))
            items.append(f"<polyline points='{path}' fill='none' stroke='{colour}'/>")
        for i, v in coords:
            x, y = xy(i, v)
            items.append(
                f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'>"
                f"<title>{escape(labels[i])}: {v:.4f}</title></circle>"
            )
    items.append("</svg>")
    return "".join(items)


def reliability_chart(bins: Sequence[Mapping[str, Any]], size: int = 220) -> str:
    """Observed delay rate against mean predicted probability per bin, and the diagonal."""
    margin = 30
    span = size - 2 * margin
    total = sum(b["rows"] for b in bins) or 1
    items = [
        f"<svg width='{size}' height='{size}' role='img' xmlns='http://www.w3.org/2000/svg'>",
        f"<rect x='{margin}' y='{margin}' width='{span}' height='{span}' fill='none' "
        "stroke='#999'/>",
        f"<line x1='{margin}' y1='{margin + span}' x2='{margin + span}' y2='{margin}' "
        "stroke='#999' stroke-dasharray='4 3'/>",
        f"<text x='{margin}' y='{size - 8}' font-size='9'>predicted 0</text>",
        f"<text x='{margin + span}' y='{size - 8}' font-size='9' text-anchor='end'>1</text>",
        f"<text x='4' y='{margin + 4}' font-size='9'>observed 1</text>",
    ]
    for b in bins:
        if b["rows"] == 0 or b["mean_predicted"] is None:
            continue
        x = margin + b["mean_predicted"] * span
        y = margin + span - b["observed_rate"] * span
        r = 2 + 8 * math.sqrt(b["rows"] / total)
        items.append(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' fill='{CURRENT_COLOUR}' "
            f"fill-opacity='0.7'><title>{b['rows']:,} rows: predicted "
            f"{b['mean_predicted']:.3f}, observed {b['observed_rate']:.3f}</title></circle>"
        )
    items.append("</svg>")
    return "".join(items)


# -- small helpers --------------------------------------------------------------------------


def _display_order(row: Mapping[str, Any]) -> tuple[list[str], list[float], list[float]]:
    """A categorical feature's bins in their natural order: numeric codes (``sched_hour``,
    ``weekday``) by value, not as text ("10" before "5"), then the other categories by name,
    the missing-value bin last. Numeric features keep their bins in value order as computed."""
    bins, reference, current = row["bins"], row["reference_fractions"], row["current_fractions"]
    if row["kind"] != "categorical":
        return list(bins), list(reference), list(current)

    def key(i: int) -> tuple[int, float, str]:
        label = bins[i]
        if label == MISSING:
            return (2, 0.0, "")
        try:
            return (0, float(label), "")
        except ValueError:
            return (1, 0.0, label)

    order = sorted(range(len(bins)), key=key)
    return [bins[i] for i in order], [reference[i] for i in order], [current[i] for i in order]


def _top_bins(
    labels: Sequence[str], reference: Sequence[float], current: Sequence[float]
) -> tuple[list[str], list[float], list[float]]:
    """At most MAX_CATEGORIES bars: the largest bins (either side), the rest summed."""
    if len(labels) <= MAX_CATEGORIES:
        return list(labels), list(reference), list(current)
    order = sorted(range(len(labels)), key=lambda i: -max(reference[i], current[i]))
    keep = sorted(order[: MAX_CATEGORIES - 1])
    rest = [i for i in range(len(labels)) if i not in set(keep)]
    return (
        [labels[i] for i in keep] + [f"{len(rest)} others"],
        [reference[i] for i in keep] + [sum(reference[i] for i in rest)],
        [current[i] for i in keep] + [sum(current[i] for i in rest)],
    )


def _ordered(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: (STATUS_ORDER.get(r["status"], 9), -(r["psi"] or 0.0)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned). Cells are HTML."""

    def cell(tag: str, i: int, value: str) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{value}</{tag}>"

    widths = {len(row) for row in rows} - {len(header)}
    if widths:  # a table whose headers do not name its cells misleads every reader
        raise ValueError(f"table rows have {sorted(widths)} cells for {len(header)} headers")
    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _legend() -> str:
    return (
        f"<p class='legend'><span style='background:{REFERENCE_COLOUR}'></span>reference "
        f"(training split)<span style='background:{CURRENT_COLOUR}'></span>current (window)</p>"
    )


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4f}" if _is_number(value) else "-"


def _signed(value: Any) -> str:
    return f"{value:+.4f}" if _is_number(value) else "-"


def _p(value: Any) -> str:
    return f"{value:.2g}" if _is_number(value) else "-"


def _share(value: Any) -> str:
    return f"{value:.1%}" if _is_number(value) else "-"


def _days(value: Any) -> str:
    return f"{value} days" if value is not None else "unknown"


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items()))


def _labelled(window: Mapping[str, Any]) -> str:
    if window.get("status") == MEASURED:
        return f"{window['labelled']:,}"
    needed = window.get("needed")
    suffix = f" (needs {needed:,})" if needed else ""
    return f"{window.get('labelled', 0):,}{suffix}"
