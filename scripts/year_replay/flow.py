"""The weekly loop: operations from July to December 2013, one week at a time.

Before the first week: backfill the first half of the year and train the initial champion on
it (the default promotion: it becomes champion if it passes the gates' floor). Then each week:

1. **features** - the feature pipeline for the week's days (flights, outcomes, statistics);
2. **batch scoring** - every day of the week with the champion, and with the challenger too
   while one is shadowed (both logged in ``predictions`` under their versions);
3. **monitoring** - drift, delayed-label quality and the retraining policy of the champion over
   the week's batch scores;
4. **shadow decision** - once the week's outcomes are in, champion and challenger are compared on
   the same labelled flights: the challenger is promoted only when it is gate-eligible and at
   least as good by the configured margins; otherwise champion stays, and why is recorded;
5. **continuous training** - when the policy fires (monitoring's reasons, or the fallback
   schedule) and no challenger is still in shadow: train on the newest window in CT mode, so the
   new version becomes ``challenger`` and never ``champion``; the gates' decision says whether
   it is shadowed next week.

The journal is saved after every step that changed the registry, so an interrupted replay
resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.errors import ConfigurationError
from shared.promotion import (
    Promotion,
    ShadowRules,
    decide,
    gate_eligibility,
    promote_if_eligible,
    record_shadow_result,
)
from shared.registry import CHAMPION, ModelRegistry
from training_pipeline.config import RecentWindows

from .calendar import YEAR_START, Week, replay_weeks
from .journal import Journal
from .settings import ReplayPlan, ReplaySettings
from .steps import (
    backfill_features,
    monitor_settings,
    monitor_week,
    score_days,
    scorer_session,
    shadow_comparison,
    train_version,
)

log = logging.getLogger(__name__)

Notify = Callable[[str], None]


@dataclass
class Replay:
    settings: ReplaySettings
    plan: ReplayPlan
    journal: Journal
    registry: ModelRegistry
    monitor_overrides: dict[str, Any]
    notify: Notify

    @property
    def rules(self) -> ShadowRules:
        return self.settings.shadow_rules

    def save(self) -> None:
        self.journal.save()


def run_replay(
    settings: ReplaySettings,
    plan: ReplayPlan,
    weeks: list[Week],
    *,
    monitor_overrides: dict[str, Any] | None = None,
    notify: Notify = log.info,
) -> Journal:
    """Run (or resume) the replay over ``weeks``; returns the journal with every week done."""
    began = time.perf_counter()
    journal = Journal.open(settings.resolved_replay_dir, plan)
    replay = Replay(
        settings=settings,
        plan=plan,
        journal=journal,
        registry=ModelRegistry(settings),
        monitor_overrides=monitor_overrides or {},
        notify=notify,
    )
    if journal.initial is None:
        initial_champion(replay, weeks[0] if weeks else replay_weeks()[plan.start_week - 1])
    with scorer_session(settings, plan.scorer) as triton_url:
        for week in weeks:
            if journal.finished(week.index):
                notify(f"{week.label}: done in an earlier run, skipped")
                continue
            run_week(replay, week, triton_url)
    journal.runs.append(
        {"weeks": [w.index for w in weeks], "seconds": round(time.perf_counter() - began, 1)}
    )
    journal.save()
    return journal


def initial_champion(replay: Replay, first_week: Week) -> None:
    """History before operations: backfill Jan 1 .. the day before the first week, and train the
    first champion on it (train from Jan 1, then validation and test windows at the end)."""
    existing = replay.registry.version_for(CHAMPION)
    if existing is not None:
        raise ConfigurationError(
            f"{replay.settings.data_root} already has a champion (v{existing}) that this replay "
            "did not make: replay into an empty --data-root (or --fresh one made by a replay)"
        )
    last_day = first_week.start - timedelta(days=1)
    replay.notify(f"history: feature backfill {YEAR_START}..{last_day}")
    features = backfill_features(replay.settings, YEAR_START, last_day)
    plan = replay.plan
    held_out = plan.validation_days + plan.test_days
    recent = RecentWindows(
        train_days=(last_day - YEAR_START).days + 1 - held_out,
        validation_days=plan.validation_days,
        test_days=plan.test_days,
    )
    replay.notify(f"history: train the initial champion ({plan.epochs} epochs)")
    trained = train_version(replay.settings, plan, recent.ending(last_day), Promotion.if_gates_pass)
    if not trained["promoted"]:
        raise ConfigurationError(
            f"the initial model v{trained['version']} failed the gates ({trained['gates']}): "
            "the replay needs a champion to start from"
        )
    story = replay.journal.version(trained["version"])
    story |= {"trained_week": 0, "training": trained, "why_trained": "initial champion"}
    story |= {"promoted_week": 0, "promotion_reason": "initial champion: passed the gates"}
    replay.journal.initial = {"features": features, "training": trained}
    replay.journal.last_training_week = first_week.index - 1
    replay.save()


def run_week(replay: Replay, week: Week, triton_url: str | None) -> None:
    began = time.perf_counter()
    journal = replay.journal
    if journal.current is None or journal.current["index"] != week.index:
        champion = replay.registry.version_for(CHAMPION)
        if champion is None:
            raise ConfigurationError("the registry has no champion: the replay cannot score")
        journal.current = {
            "index": week.index,
            "label": week.label,
            "start": week.start.isoformat(),
            "end": week.end.isoformat(),
            "champion": champion,
            "challenger": journal.challenger,
        }
        replay.save()
    current = journal.current
    champion, challenger = current["champion"], current["challenger"]

    replay.notify(f"{week.label}: feature pipeline")
    current["features"] = backfill_features(replay.settings, week.start, week.end)
    shadowing = f" + shadow v{challenger}" if challenger else ""
    replay.notify(f"{week.label}: batch scoring with champion v{champion}{shadowing}")
    versions = [champion, *([challenger] if challenger else [])]
    current["scoring"] = score_days(replay.settings, week.days, versions, triton_url)
    replay.notify(f"{week.label}: monitoring")
    current["monitor"] = monitor_week(
        monitor_settings(replay.settings, replay.monitor_overrides),
        week,
        champion,
        replay.settings.resolved_replay_dir / "monitoring" / f"week-{week.index:02d}",
    )
    if challenger:
        current["shadow"] = shadow_decision(replay, week, champion, challenger)
        replay.save()
    current["policy"] = retraining(replay, week)
    current["champion_after"] = replay.registry.version_for(CHAMPION)
    current["seconds"] = round(time.perf_counter() - began, 2)
    journal.weeks.append(current)
    journal.current = None
    replay.save()


def shadow_decision(replay: Replay, week: Week, champion: str, challenger: str) -> dict[str, Any]:
    """Compare on the week's labels; promote, keep the champion, or keep shadowing."""
    comparison = shadow_comparison(replay.settings, week, champion, challenger)
    eligibility = gate_eligibility(replay.registry.get(challenger))
    decision = decide(comparison, eligibility, replay.rules)
    replay.notify(f"{week.label}: shadow: {decision.reason}")
    story = replay.journal.version(challenger)
    if decision.promote:
        promote_if_eligible(replay.registry, challenger, f"{week.label}: {decision.reason}")
        story |= {"promoted_week": week.index, "promotion_reason": decision.reason}
    if decision.resolved:
        replay.journal.challenger = None
        story["shadow_result"] = decision.reason
        record_shadow_result(replay.registry, challenger, decision.reason)
    return comparison.to_dict() | {
        "promoted": decision.promote,
        "resolved": decision.resolved,
        "reason": decision.reason,
    }


def retraining(replay: Replay, week: Week) -> dict[str, Any]:
    """Apply the policy: monitoring's reasons, or the fallback schedule; train in CT mode."""
    journal = replay.journal
    monitor = journal.current["monitor"] if journal.current else {}
    reasons = list(monitor.get("retrain", {}).get("reasons", []))
    schedule = replay.settings.retrain_schedule_weeks
    since = week.index - (journal.last_training_week or 0)
    if schedule is not None and since >= schedule:
        reasons.append(f"schedule: no training for {since} weeks (every {schedule})")
    policy: dict[str, Any] = {"fire": bool(reasons), "reasons": reasons}
    if not reasons:
        return policy | {"action": "none"}
    if journal.challenger is not None:
        return policy | {"action": f"not retrained: challenger v{journal.challenger} in shadow"}
    cooldown = replay.settings.retrain_cooldown_weeks
    if since < cooldown:
        return policy | {
            "action": f"not retrained: last training {since} week(s) ago (cooldown {cooldown})"
        }
    windows = RecentWindows(
        train_days=replay.plan.train_days,
        validation_days=replay.plan.validation_days,
        test_days=replay.plan.test_days,
    ).ending(week.end)
    replay.notify(f"{week.label}: retrain on {windows.train.start}..{week.end} (CT: challenger)")
    trained = train_version(replay.settings, replay.plan, windows, Promotion.never)
    version = trained["version"]
    story = journal.version(version)
    story |= {"trained_week": week.index, "training": trained, "why_trained": "; ".join(reasons)}
    journal.last_training_week = week.index
    if trained["gates_passed"]:
        journal.challenger = version
        action = f"trained v{version}: gate-eligible challenger, shadowed next week"
    else:
        story["shadow_result"] = f"not shadowed: refused by the gates ({trained['gates']})"
        action = f"trained v{version}: refused by the gates, champion stays"
    replay.notify(f"{week.label}: {action}")
    replay.save()
    return policy | {"action": action, "trained": version}
