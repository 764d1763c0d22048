"""The one-page report of a replay: Markdown, HTML and JSON, from the journal alone.

Per week: rows scored, the share of drifted features, the champion's ROC AUC and log loss on
the week's labels (and the challenger's on the same flights while shadowed), the policy's
decision and its reasons, what was done. Per version: when and why it was trained, on which
window, its gate decision, and whether and why it became champion.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from .journal import Journal


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def short_reason(reason: str) -> str:
    """The policy's reason without the list of drifted features (the JSON keeps it whole):
    ``data drift: 22 of 43 features drifted (51% > 15%): a, b, ...`` -> up to the ``)``."""
    head, sep, _ = reason.partition("): ")
    return head + ")" if sep else reason


def week_rows(journal: Journal) -> list[dict[str, str]]:
    rows = []
    for week in sorted(journal.weeks, key=lambda w: w["index"]):
        monitor, shadow = week.get("monitor", {}), week.get("shadow")
        scored = week.get("scoring", {}).get("versions", {})
        drift = _share(monitor.get("drift_share"))
        if monitor.get("tested"):
            drift += f" ({monitor['drifted']}/{monitor['tested']})"
        challenger = "-"
        if shadow:
            challenger = (
                f"v{shadow['challenger']}: {_num(shadow['challenger_roc_auc'])} / "
                f"{_num(shadow['challenger_log_loss'])} vs {_num(shadow['champion_roc_auc'])} / "
                f"{_num(shadow['champion_log_loss'])}"
            )
        policy = week.get("policy", {})
        reasons = [short_reason(r) for r in policy.get("reasons", [])]
        decision = "fire: " + "; ".join(reasons) if policy.get("fire") else "quiet"
        actions = [policy.get("action", "none")]
        if shadow:
            actions.insert(0, shadow["reason"])
        rows.append(
            {
                "week": week["label"],
                "rows scored": " + ".join(f"{v['flights']:,}" for v in scored.values()),
                "drift share": drift,
                "champion": f"v{week['champion']}",
                "ROC AUC": _num(monitor.get("roc_auc")),
                "log loss": _num(monitor.get("log_loss")),
                "shadow: challenger vs champion (AUC / log loss)": challenger,
                "policy": decision,
                "action": " | ".join(a for a in actions if a and a != "none") or "-",
            }
        )
    return rows


def _week_ref(index: int | None) -> str:
    """0 is the history before the replay (the initial champion)."""
    if index is None:
        return "-"
    return "history" if index == 0 else f"W{index:02d}"


def version_rows(journal: Journal) -> list[dict[str, str]]:
    rows = []
    for number, story in sorted(journal.versions.items(), key=lambda kv: int(kv[0])):
        training = story.get("training", {})
        windows = training.get("windows", {})
        rows.append(
            {
                "version": f"v{number}",
                "trained": _week_ref(story.get("trained_week")),
                "why": "; ".join(
                    short_reason(r) for r in story.get("why_trained", "-").split("; ")
                ),
                "train / test window": f"{windows.get('train', '?')} / {windows.get('test', '?')}",
                "test ROC AUC": _num(training.get("test_roc_auc")),
                "gates": training.get("gates", "-"),
                "champion": _week_ref(story.get("promoted_week")),
                "why / shadow result": story.get("promotion_reason")
                or story.get("shadow_result", "-"),
            }
        )
    return rows


def summary(journal: Journal) -> dict[str, Any]:
    weeks = journal.weeks
    promotions = [s for s in journal.versions.values() if s.get("promoted_week")]
    last = max(weeks, key=lambda w: w["index"]) if weeks else None
    return {
        "weeks": len(weeks),
        "first_week": min((w["label"] for w in weeks), default=None),
        "last_week": last["label"] if last else None,
        "rows_scored": sum(
            v["flights"] for w in weeks for v in w.get("scoring", {}).get("versions", {}).values()
        ),
        "versions_trained": len(journal.versions),
        "retrains": sum(1 for w in weeks if w.get("policy", {}).get("trained")),
        "promotions": len(promotions),
        "champion": last.get("champion_after") if last else None,
        "seconds": round(sum(r["seconds"] for r in journal.runs), 1),
    }


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_none_\n"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h].replace("|", "/") for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(journal: Journal) -> str:
    s = summary(journal)
    plan = journal.plan
    return (
        "# 2013 replay: operations week by week\n\n"
        f"{s['weeks']} weeks ({s['first_week']} .. {s['last_week']}), {s['rows_scored']:,} "
        f"predictions, {s['versions_trained']} versions trained ({s['retrains']} by continuous "
        "training), "
        f"{s['promotions']} promotions; champion at the end: v{s['champion']}. "
        f"Wall time {s['seconds']:.0f} s (scorer {plan['scorer']}, {plan['epochs']} epochs).\n\n"
        "## Weeks\n\nRows scored: the champion's batch predictions (+ the challenger's while "
        "shadowed). Drift: the champion's drifted share on the week's batch scores (by feature "
        "family unless FTI_DRIFT_SHARE_BY=feature), with its drifted of tested features. "
        "ROC AUC / log loss: the champion on the week's labelled flights.\n\n"
        + _markdown_table(week_rows(journal))
        + "\n## Versions\n\n"
        + _markdown_table(version_rows(journal))
    )


def render_html(journal: Journal) -> str:
    s = summary(journal)

    def table(rows: list[dict[str, str]]) -> str:
        if not rows:
            return "<p>none</p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    style = (
        "body{font-family:sans-serif;margin:1.5em;font-size:13px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>2013 replay</title>"
        f"<style>{style}</style></head><body><h1>2013 replay: operations week by week</h1>"
        f"<p>{s['weeks']} weeks, {s['rows_scored']:,} predictions, {s['versions_trained']} "
        f"versions trained, {s['promotions']} promotions; champion at the end: "
        f"v{s['champion']}; wall time {s['seconds']:.0f} s.</p>"
        f"<h2>Weeks</h2>{table(week_rows(journal))}"
        f"<h2>Versions</h2>{table(version_rows(journal))}</body></html>"
    )


def write_report(journal: Journal, directory: Path) -> dict[str, Path]:
    """``report.md``, ``report.html`` and ``report.json`` (each written whole or not at all)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": directory / "report.md",
        "html": directory / "report.html",
        "json": directory / "report.json",
    }
    document = {
        "summary": summary(journal),
        "plan": journal.plan,
        "weeks": sorted(journal.weeks, key=lambda w: w["index"]),
        "versions": journal.versions,
        "initial": journal.initial,
    }
    for kind, text in (
        ("markdown", render_markdown(journal)),
        ("html", render_html(journal)),
        ("json", json.dumps(document, indent=1, sort_keys=True, default=str)),
    ):
        tmp = paths[kind].with_name(f".{paths[kind].name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, paths[kind])
    return paths
