"""The year replay: 2013 as operations would have lived it, week by week.

``python scripts/replay_2013.py`` drives it (see that file). The package lives in ``scripts/``
because it is the one place allowed to import all three pipelines; each pipeline is called
through the same plain function its own CLI calls, in one process, so the replay runs in
minutes instead of paying every CLI's start-up (PyTorch, MLflow) a few hundred times.

Modules: :mod:`.calendar` (the weeks), :mod:`.settings` (what is configurable),
:mod:`.steps` (one pipeline call each), :mod:`.journal` (resumable state), :mod:`.flow` (the
weekly loop) and :mod:`.report` (the one-page report). The shadow decision is not the replay's
own: champion and challenger are paired on the same labelled flights by
:mod:`inference_pipeline.monitor.shadow` and judged by :func:`shared.promotion.decide`, exactly
as the monitor's shadow step does for online shadow traffic.
"""
