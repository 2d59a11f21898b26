"""Reading a study's timing run back (:mod:`ablab.training.timing` wrote it): each variant's
speed per round, for quantities with ``stat: interleaved``, and what the report says about how
the speed was timed.

The rounds of one interleaved timing are the replicates: ``values[variant][round]``, paired
across variants by round (every variant was timed in every round, one after another, so a
round's machine state is shared). The verdict is about speed on the machine the timing ran on,
which the report names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from mlflow import MlflowClient
from mlflow.entities import Run

from ablab.analysis.results import Verdict
from ablab.study import Study
from ablab.tracking import timing as names


def timing_values(
    client: MlflowClient, study: Study, children: Iterable[Run], fingerprint: str | None = None
) -> tuple[Run | None, dict[str, dict[str, dict[int, float]]]]:
    """The newest finished timing run among ``children`` of the design ``fingerprint`` names
    (:meth:`ablab.study.Study.timing_fingerprint`; None: any) — None when there is none — and,
    per ``interleaved`` quantity, ``{variant: {round: value}}`` read off it (empty without)."""
    quantities = [q for q in study.quantities if q.from_timing]
    run = names.latest_timing_run(children, fingerprint) if quantities else None
    values: dict[str, dict[str, dict[int, float]]] = {q.name: {} for q in quantities}
    if run is None:
        return None, values
    for q in quantities:
        for variant in study.variants:
            key = names.metric_name(q.metric, variant)
            if key in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, key)
                values[q.name][variant] = {m.step: float(m.value) for m in history}
    return run, values


def timing_text(run: Run) -> str:
    """How the speed was timed: "timed interleaved in one process over 10 rounds (…) on <CPU>,
    GPU: none, 1 torch thread(s), torch 2.x"."""
    tags = run.data.tags
    gpu = tags.get("hw.gpu", "none")
    device = tags.get(names.DEVICE, "?")
    load = f", 1-min load {tags[names.LOAD]} as it began" if names.LOAD in tags else ""
    return (
        f"timed interleaved in one process over {tags.get(names.ROUNDS, '?')} rounds (every "
        f"variant's net in each round, the order reversed every round; {tags.get(names.MODE, '?')}"
        f", batch {tags.get(names.BATCH_SHAPE, '?')}, {device}, {tags.get(names.PRECISION, '?')})"
        f" on {tags.get('hw.cpu', '?')}, GPU: {gpu}, {tags.get(names.THREADS, '?')} torch "
        f"thread(s), torch {tags.get(names.TORCH, '?')}{load}"
    )


def machine_suffix(run: Run | None) -> str:
    """What the report's machine line adds for a study with a timing run: "; speed …"."""
    return "" if run is None else f"; speed {timing_text(run)}"


def timing_note(verdict: Verdict, study: Study, run: Run | None) -> Verdict:
    """``verdict`` of an ``interleaved`` quantity saying that its replicates are the rounds of
    one interleaved timing, and how it was timed; or that the parent has no timing run."""
    quantity = next((q for q in study.quantities if q.name == verdict.quantity), None)
    if quantity is None or not quantity.from_timing:
        return verdict
    if run is None:
        note = (
            "no finished timing run of this parent for this design (a timing of other "
            "overrides or another timing spec is not read): `ablab study` times the variants "
            "after the comparison (or `ablab time-study <study>`)"
        )
    else:
        tags = run.data.tags
        gpu = f" and {tags['hw.gpu']}" if tags.get("hw.gpu", "none") != "none" else ""
        note = (
            f"paired by round: the replicates are the {tags.get(names.ROUNDS, '?')} rounds of "
            f"one timing, timed interleaved in one process on {tags.get('hw.cpu', '?')}{gpu}, "
            f"{tags.get(names.THREADS, '?')} torch thread(s) (n counts rounds, not seeds): "
            "speed on this machine"
        )
    return replace(verdict, reason=f"{verdict.reason.rstrip('.')}; {note}.")


def from_timing(study: Study) -> set[str]:
    """Names of the study's quantities read off its timing run."""
    return {q.name for q in study.quantities if q.from_timing}
