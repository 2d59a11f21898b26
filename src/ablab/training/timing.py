"""A study's speed, timed interleaved in one process: ``python -m ablab.training.timing <study>
--size quick [--again] [overrides]`` (or ``ablab time-study``), which ``ablab study`` runs once
the comparison's runs are done, for a study that declares ``timing``.

Speed measured by each run's own benchmark, in separate processes, compares machine states
rather than networks: the same net measured 1,555 and 2,693 images/s in two runs of one study.
Here every variant's network is built from that variant's composed config (the study's common,
size and variant overrides, at the variant's tuned point when the study tunes; initialised as
its runs are, never trained) and all are timed in one process on one batch of the same shape,
in rounds of alternating blocks with the order reversed every round
(:func:`ablab.training.benchmark.time_alternating`: ``torch.utils.benchmark``'s
``blocked_autorange``, ``min_run_time / rounds`` seconds per net and round), so a drift in the
machine's load falls on every variant alike, and each round is one paired replicate: the report
compares the variants round by round (``stat: interleaved``).

``mode: inference`` times ``net(x)`` in eval mode under ``torch.inference_mode``;
``mode: train_step`` times ``net(x).sum().backward()`` in train mode (BN batch statistics,
dropout on; gradients set to None first; no optimizer step). The config's device, precision
(autocast for ``*-mixed``, the weights cast for ``*-true``), ``trainer.channels_last`` and
``trainer.compile`` apply; threads: ``timing.threads``, else ``trainer.threads``, else 1.

The result is one child run of the study's parent, tagged ``timing=true``, with the hardware,
torch version, threads, batch shape, mode, device and precision as tags and, per variant, the
images/s and ms per batch of every round at step = round (:mod:`ablab.tracking.timing` names
them) and the median images/s; every block's time goes to ``timing/timing.json``.

Idempotent: when the parent already has a FINISHED timing run, nothing is timed again (``--again``
times anew; the report reads the newest finished one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from ablab.errors import ConfigError
from ablab.study import TIMING_METRICS, Study, Timing, Tune, load_study
from ablab.tracking import timing as names
from ablab.training.benchmark import eval_mode, time_alternating

#: ``trainer.precision`` -> (autocast dtype, weight dtype); anything else times in float32.
PRECISIONS: dict[str, tuple[torch.dtype | None, torch.dtype]] = {
    "16-mixed": (torch.float16, torch.float32),
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-true": (None, torch.float16),
    "bf16-true": (None, torch.bfloat16),
    "64-true": (None, torch.float64),
}
#: What ``mode: train_step`` times: one forward and backward, from no gradients.
TRAIN_STEP = "net.zero_grad(set_to_none=True); net(x).float().sum().backward()"


@dataclass
class Built:
    """One variant's network and how its config says to run it."""

    net: nn.Module
    input_shape: tuple[int, ...]  # (C, H, W)
    device: torch.device
    precision: str
    threads: int | None  # trainer.threads


@dataclass
class TimedRounds:
    """Every variant's time per batch in each round of one interleaved timing."""

    mode: str
    batch_shape: tuple[int, ...]
    threads: int
    device: str
    precision: str
    #: variant -> the median seconds per batch of each round, in round order
    seconds: dict[str, list[float]]
    #: variant -> round -> every block's seconds per batch
    blocks: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    def images_per_s(self, variant: str) -> list[float]:
        return [self.batch_shape[0] / s for s in self.seconds[variant]]

    def ms_per_batch(self, variant: str) -> list[float]:
        return [s * 1e3 for s in self.seconds[variant]]

    def median_images_per_s(self, variant: str) -> float:
        return float(torch.tensor(self.images_per_s(variant)).median())

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "batch_shape": list(self.batch_shape), "threads": self.threads,
            "device": self.device, "precision": self.precision, "torch": torch.__version__,
            "variants": {
                v: {"images_per_s": self.images_per_s(v), "ms_per_batch": self.ms_per_batch(v),
                    "median_images_per_s": self.median_images_per_s(v),
                    "block_ms": [[t * 1e3 for t in r] for r in self.blocks.get(v, [])]}
                for v in self.seconds
            },
        }  # fmt: skip


def time_nets(
    nets: Mapping[str, nn.Module],
    x: Tensor,
    timing: Timing,
    threads: int,
    autocast: torch.dtype | None = None,
    precision: str = "32-true",
) -> TimedRounds:
    """Time ``nets`` on ``x`` interleaved (see the module docstring); each net's training flags
    are restored afterwards."""
    inference = timing.mode == "inference"
    stmt = "net(x)" if inference else TRAIN_STEP
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.ExitStack() as stack:
            for net in nets.values():
                stack.enter_context(eval_mode(net))  # restores every flag on exit
                net.train(not inference)
            if autocast is not None:
                stack.enter_context(torch.autocast(x.device.type, dtype=autocast))
            warm_up(nets, x, stmt, inference)
            timed = time_alternating(
                nets, x, timing.min_run_time, timing.rounds, threads, stmt=stmt, inference=inference
            )
    finally:
        torch.set_num_threads(previous)
    return TimedRounds(
        mode=timing.mode,
        batch_shape=tuple(x.shape),
        threads=threads,
        device=str(x.device),
        precision=precision,
        seconds={v: [m.median for m in t.replicates] for v, t in timed.items()},
        blocks={v: [list(m.times) for m in t.replicates] for v, t in timed.items()},
    )


def warm_up(nets: Mapping[str, nn.Module], x: Tensor, stmt: str, inference: bool) -> None:
    """Run each net's statement twice before any timing: a compiled net compiles here, and
    lazy allocations and kernel choices are made, not timed in the first round."""
    with torch.inference_mode(inference), torch.set_grad_enabled(not inference):
        for net in nets.values():
            Timer(stmt, globals={"net": net, "x": x}).timeit(2)


def build_variant(overrides: Sequence[str]) -> Built:
    """The network a run with these overrides would train, initialised as the run would, on
    its device (the trainer's accelerator), with its compute switches; raise ConfigError."""
    from ablab.config import composed
    from ablab.init import initialize
    from ablab.tasks.base import Task
    from ablab.training.run import apply_compute_switches, as_config_error, component_class

    with composed(list(overrides)) as cfg:
        task = component_class(cfg, "task", Task)
        if len(task.networks) != 1:
            raise ConfigError(
                f"timing times one network per variant; task {cfg.task._target_} builds "
                f"{len(task.networks)} ({', '.join(task.networks.values())})"
            )
        (group,) = task.networks.values()
        shape = input_shape(cfg)
        device = accelerator_device(str(cfg.trainer.accelerator))
        try:
            torch.manual_seed(cfg.seeds.init)
            net = initialize(instantiate(cfg[group]), **cfg.init)
        except ConfigError:
            raise
        except Exception as err:
            raise as_config_error(err) from err
        precision = str(cfg.trainer.precision)
        weights = PRECISIONS.get(precision, (None, torch.float32))[1]
        net = net.to(device=device, dtype=weights)
        net = apply_compute_switches(net, cfg.trainer.compile, cfg.trainer.channels_last)
        threads = cfg.trainer.get("threads")
        return Built(net, shape, device, precision, threads)


def input_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(C, H, W) of the configured data's images, as ``ablab summary`` traces them."""
    channels = OmegaConf.select(cfg, "data.in_channels")
    size = OmegaConf.select(cfg, "data.image_size")
    if channels is None or size is None:
        raise ConfigError("timing needs image data (data.in_channels and data.image_size)")
    return int(channels), int(size), int(size)


def accelerator_device(accelerator: str) -> torch.device:
    """The device ``trainer.accelerator`` trains on: ``auto`` is a GPU when there is one."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA device to time on")
        return torch.device("cuda", 0)
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def time_study(
    study: Study, size: str, overrides: Sequence[str], tuned: Mapping[str, Mapping[str, Any]]
) -> TimedRounds:
    """Build every variant's network from its composed config (its first comparison job's
    overrides, plus ``overrides``) and time them all interleaved on one batch shape."""
    timing = study.timing
    if timing is None:
        raise ConfigError(f"study {study.name} declares no timing")
    first: dict[str, Sequence[str]] = {}
    for job in study.jobs(size, tuned=dict(tuned)):
        first.setdefault(job.variant, job.overrides)
    built = {v: build_variant([*o, *overrides]) for v, o in first.items()}
    for key in ("input_shape", "device", "precision"):
        if len({getattr(b, key) for b in built.values()}) > 1:
            values = ", ".join(f"{v} {getattr(b, key)}" for v, b in built.items())
            raise ConfigError(f"timing compares the variants on one {key}; they differ: {values}")
    base = built[study.baseline]
    threads = timing.threads or base.threads or 1
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((timing.batch_size, *base.input_shape), generator=generator)
    autocast, weights = PRECISIONS.get(base.precision, (None, torch.float32))
    x = x.to(device=base.device, dtype=weights)
    nets = {v: b.net for v, b in built.items()}
    return time_nets(nets, x, timing, threads, autocast, base.precision)


def log_timing(
    client: Any,
    parent: Any,
    timed: TimedRounds,
    timing: Timing,
    clock: Callable[[], float],
    fingerprint: str = "",
) -> str:
    """One child run of ``parent`` holding ``timed`` (the tags and metrics the module docstring
    lists); returns its id."""
    from ablab.tracking.context import run_context_tags

    tags = {
        **run_context_tags(),
        "mlflow.parentRunId": parent.info.run_id,
        names.TAG: "true",
        names.MODE: timed.mode,
        names.ROUNDS: str(timed.rounds),
        names.SECONDS: f"{timing.min_run_time:g}",
        names.THREADS: str(timed.threads),
        names.BATCH_SHAPE: "x".join(map(str, timed.batch_shape)),
        names.DEVICE: timed.device,
        names.PRECISION: timed.precision,
        names.TORCH: torch.__version__,
        names.FINGERPRINT: fingerprint,
    }
    if hasattr(os, "getloadavg"):  # how idle the machine was as the timing began
        tags[names.LOAD] = f"{os.getloadavg()[0]:.2f}"
    run_id = client.create_run(parent.info.experiment_id, run_name="timing", tags=tags).info.run_id
    try:
        _log_rounds(client, run_id, timed, int(clock() * 1000))
    except BaseException as err:
        client.set_tag(run_id, "error", str(err)[:500])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_rounds(client: Any, run_id: str, timed: TimedRounds, now: int) -> None:
    from mlflow.entities import Metric

    images, ms = TIMING_METRICS
    metrics = []
    for variant in timed.seconds:
        per_round = zip(timed.images_per_s(variant), timed.ms_per_batch(variant), strict=True)
        for i, (speed, duration) in enumerate(per_round):
            metrics.append(Metric(names.metric_name(images, variant), speed, now, i))
            metrics.append(Metric(names.metric_name(ms, variant), duration, now, i))
        median = timed.median_images_per_s(variant)
        metrics.append(Metric(names.median_name(images, variant), median, now, 0))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_text(run_id, json.dumps(timed.summary(), indent=1), "timing/timing.json")


def tuned_points(study: Study, tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each tuned variant's grid point, as the parent run records it (``tuned.<variant>``)."""
    if study.tune is None:
        return {}
    points = {Tune.label(p): p for p in study.tune.points()}
    missing = [v for v in study.tuned_variants if tags.get(f"tuned.{v}") not in points]
    if missing:
        raise ConfigError(f"study {study.name}: no tuned point recorded for {', '.join(missing)}; "
                          "run the study's command first (it tunes, then compares)")  # fmt: skip
    return {v: points[tags[f"tuned.{v}"]] for v in study.tuned_variants}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablab time-study",
        description="Time every variant's network of a study interleaved in one process and log "
        "the result as a child run of the study's latest parent (of --size).",
    )
    parser.add_argument("study", help="a study name (experiments/<name>) or its folder")
    parser.add_argument("--size", default="quick", help="the size whose parent run to add to")
    parser.add_argument(
        "--again", action="store_true",
        help="time even when the parent has a finished timing run (the report reads the newest)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="applied to every variant, after the study's")
    return parser


def main(argv: Sequence[str] | None = None) -> str | None:
    """Time a study's variants (see the module docstring); returns the timing run's id, or None
    when a finished one exists already."""
    args = parser().parse_intermixed_args(argv)
    from mlflow import MlflowClient

    from ablab.analysis.collect import find_study_runs
    from ablab.config import composed

    study = load_study(args.study)
    if study.timing is None:
        raise ConfigError(f"study {study.name} declares no timing")
    stored = [o for o in args.overrides if o.startswith(("logger.", "paths."))]
    with composed(stored) as cfg:
        uri = str(cfg.logger.tracking_uri)
    client = MlflowClient(uri)
    runs = find_study_runs(client, str(study.folder), args.size)
    tags = runs.parent.data.tags
    tuned = tuned_points(study, tags)
    # a timing of another design (timing spec, a variant's overrides, the tuned points, the
    # command's overrides changed since) is not kept: this design is timed anew
    fingerprint = study.timing_fingerprint(args.size, tuned, tags.get("study_overrides", ""))
    done = names.latest_timing_run(runs.children, fingerprint)
    if done is not None and not args.again:
        print(f"ablab: timing: finished timing run {done.info.run_id} of this parent kept "
              "(--again times anew)", file=sys.stderr)  # fmt: skip
        return None
    print(f"ablab: timing {len(study.variants)} variants interleaved, {study.timing.rounds} "
          f"rounds", file=sys.stderr)  # fmt: skip
    timed = time_study(study, args.size, args.overrides, tuned)
    run_id = log_timing(client, runs.parent, timed, study.timing, time.time, fingerprint)
    for variant in timed.seconds:
        print(f"ablab: timing: {variant}: median {timed.median_images_per_s(variant):,.0f} "
              f"images/s over {timed.rounds} rounds", file=sys.stderr)  # fmt: skip
    return run_id


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as err:
        print(f"ablab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    with _one_line_errors():
        main()
