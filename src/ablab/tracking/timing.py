"""A study's timing run in MLflow: its tags, its metric keys, and finding it among the parent's
children. Torch-free: the timing module writes the run, the report reads it.

The timing run (:mod:`ablab.training.timing`) is a child of the study's parent run tagged
``timing=true``, without a ``variant`` param (so the comparison never reads it as one of its
runs). Per variant it logs ``timing/images_per_s/<variant>`` and ``timing/ms_per_batch/<variant>``
at step = round index (one value per round), and ``timing/median/images_per_s/<variant>``; the
variant is written into the key with the characters MLflow refuses in a metric name replaced
(:func:`metric_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlflow.entities import Run

#: The tag that marks a study's timing run.
TAG = "timing"
#: a hash of what was timed (the timing spec, each variant's overrides at its tuned point, the
#: command's overrides): a timing run of another design is neither kept nor reported
FINGERPRINT = "timing.fingerprint"
#: Tags the timing run records about how it timed (besides ``hw.*``, ``python``, ``lib.*``).
MODE, ROUNDS, SECONDS, THREADS, BATCH_SHAPE, DEVICE, PRECISION, TORCH, LOAD = (
    "timing.mode", "timing.rounds", "timing.min_run_time", "timing.threads",
    "timing.batch_shape", "timing.device", "timing.precision", "timing.torch", "timing.load1",
)  # fmt: skip


_REFUSED = re.compile(r"[^A-Za-z0-9_\-. ]")


def metric_name(metric: str, variant: str) -> str:
    """``timing/images_per_s`` of variant ``model.act=relu,lr=0.1`` -> its MLflow key,
    ``timing/images_per_s/model.act_relu_lr_0.1`` (MLflow allows letters, digits and ``_-./``,
    and ``:`` except on Windows)."""
    return f"{metric}/{_REFUSED.sub('_', variant)}"


def median_name(metric: str, variant: str) -> str:
    """The key of the median over rounds: ``timing/median/images_per_s/<variant>``."""
    head, _, tail = metric.partition("/")
    return metric_name(f"{head}/median/{tail}", variant)


def is_timing_run(run: Run) -> bool:
    return run.data.tags.get(TAG) == "true"


def latest_timing_run(children: Iterable[Run], fingerprint: str | None = None) -> Run | None:
    """The newest FINISHED timing run among a parent's ``children`` (of the design
    ``fingerprint`` names, when given: its ``FINGERPRINT`` tag), or None: a timing run that
    failed or was killed gives nothing, and a later one (``--again``) supersedes an earlier."""
    finished = [r for r in children if is_timing_run(r) and r.info.status == "FINISHED"
                and (fingerprint is None or r.data.tags.get(FINGERPRINT) == fingerprint)]  # fmt: skip
    return max(finished, key=lambda r: r.info.start_time or 0, default=None)
