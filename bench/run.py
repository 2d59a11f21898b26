"""``make bench``: ablab's default job against a hand-written PyTorch loop, and what costs what.

One invocation measures, side by side, every arm of every selected measurement over ``--repeats``
round-robin repeats (each repeat runs every arm once, so load drift hits all arms alike), and
reports each comparison as a per-repeat ratio: median [min–max].

a. ``python -m ablab.train`` (LeNet-5 on digits, the default job) vs ``bench/raw_loop.py``: step
   time in steady state (epochs >= 1; epoch 0 is warm-up on both sides) and whole-process wall.
b. the same with ResNet-20 on synthetic 3x32x32 images, batch 128.
c. MLflow logging at the default cadence vs ``logger=null`` (the same command otherwise).
d. batched kornia augmentation vs a per-sample torchvision pipeline (``bench/augmentation.py``).
e. command start to the first training step, vs bare library imports and the raw loop's.
f. a 4-job local sweep: Hydra's basic launcher vs ``hydra/launcher=local_parallel`` vs the ideal.
g. peak memory (max RSS, from ``os.wait4``) of every process.
h. with a CUDA GPU only: ResNet-18 images/s, fp32 / bf16-mixed / channels-last / compile, ablab vs
   the raw loop.

ablab runs as the real command in a subprocess, rooted in a temporary folder (``ABLAB_ROOT``: the
MLflow store lives there; one warm-up run creates it first), with ``bench/clock.py`` injected by
Hydra overrides to time its steps. Results: ``results.json`` (every raw measurement) and
``RESULTS.md`` in ``--out`` (``bench/results``).

    OMP_NUM_THREADS=1 python bench/run.py [--repeats 3] [--only a,c] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
GROUPS = "abcdefgh"
TITLES = {
    "a": "a. Default job vs raw loop (LeNet-5, digits)",
    "b": "b. ResNet-20 on synthetic 3x32x32 vs raw loop",
    "c": "c. MLflow logging vs logger=null",
    "d": "d. Batched vs per-sample augmentation",
    "e": "e. Command start to first training step",
    "f": "f. Four-job local sweep",
    "g": "g. Peak memory (max RSS) per process",
    "h": "h. GPU: ResNet-18 images/s (fp32, bf16-mixed, channels-last, compile)",
}
IMPORT_STACK = "import torch, pytorch_lightning, hydra, mlflow, torchmetrics"
# A paired raw loop's --epochs: it stops when its ablab job has ended, long before these.
RAW_EPOCHS = 1000
AUG_BATCHED = "aug (a) batched kornia + ablab's DataLoader"
AUG_PER_SAMPLE = "aug (b) per-sample torchvision v2,"


@dataclass(frozen=True)
class Sizes:
    """Epochs and image counts: the full bench fits in under 10 minutes on 2 cores."""

    lenet_epochs: int = 10
    resnet20_epochs: int = 2  # one ResNet-20 step on one thread: about half a second
    resnet20_per_class: int = 200  # data=synthetic's default: 1,440 training images, 12 steps
    sweep_epochs: int = 1
    aug_images: int = 3000
    gpu_epochs: int = 3
    gpu_per_class: int = 1000  # 7,200 training images, 57 steps of 128


QUICK = Sizes(
    lenet_epochs=3,
    resnet20_epochs=4,
    resnet20_per_class=20,
    sweep_epochs=1,
    aug_images=256,
    gpu_epochs=2,
    gpu_per_class=100,
)


class BenchError(RuntimeError):
    pass


@dataclass
class Arm:
    """One thing timed once per repeat; ``run`` returns its measurements (a flat dict)."""

    name: str
    groups: str
    run: Callable[[], dict[str, Any]]


@dataclass
class Bench:
    """The temporary root every child process writes under, and how children are started."""

    root: Path
    sizes: Sizes
    counter: int = 0
    pairs: dict[str, int] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def unique(self, stem: str) -> Path:
        self.counter += 1
        return self.root / f"{self.counter:03d}-{stem}"

    def env(self, threads: str | None = "1") -> dict[str, str]:
        env = {**os.environ, "ABLAB_ROOT": str(self.root), "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)  # the temporary sqlite store, never a server
        path = [str(REPO / "src"), str(BENCH), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        if threads is None:
            env.pop("OMP_NUM_THREADS", None)
        else:
            env["OMP_NUM_THREADS"] = threads
        return env

    def spawn(self, cmd: list[str], stem: str, threads: str | None = "1") -> dict[str, Any]:
        """Run ``cmd`` to completion: wall seconds spawn to exit, spawn ``time.time()``, and the
        child's max RSS (MiB) and CPU seconds from ``os.wait4`` (Linux: the largest of the
        child and its waited-for descendants, and their CPU time summed)."""
        log = self.unique(stem).with_suffix(".log")
        with log.open("wb") as out:
            spawn_time, tic = time.time(), time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd=self.root, env=self.env(threads), stdout=out, stderr=subprocess.STDOUT
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - tic
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}; {log} ends:\n{tail}")
        return {
            "wall_s": wall,
            "spawn_time": spawn_time,
            "max_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
            "cpu_s": usage.ru_utime + usage.ru_stime,
            # the child's output, by name: the temporary root is removed after the run
            "log": log.name,
        }

    def ablab(self, overrides: list[str], stem: str) -> dict[str, Any]:
        """``python -m ablab.train`` with a step clock; steps and start-up from the clock."""
        run_dir, clock = self.unique(stem), self.unique(stem).with_suffix(".clock.json")
        cmd = [sys.executable, "-m", "ablab.train", *overrides, f"hydra.run.dir={run_dir}",
               "+callbacks.bench_clock._target_=clock.StepClock",
               f"+callbacks.bench_clock.path={clock}"]  # fmt: skip
        result = self.spawn(cmd, stem)
        record = json.loads(clock.read_text())
        result.update(clock_figures(record))
        result["first_step_s"] = result.pop("first_step_time") - result["spawn_time"]
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: nothing reads them
        return result

    def raw(self, args: list[str], stem: str) -> dict[str, Any]:
        """``bench/raw_loop.py``, one torch thread; its JSON line plus the parent's figures."""
        result = self.spawn([sys.executable, str(BENCH / "raw_loop.py"), *args], stem)
        out = json.loads((self.root / result["log"]).read_text().strip().splitlines()[-1])
        result.update(
            step_s=out["step_s"],
            images_per_s=out["images_per_s"],
            steps=sum(e["steps"] for e in out["epochs"]),
            epochs=len(out["epochs"]),
            threads=out["threads"],
            first_step_s=out["first_step_time"] - result["spawn_time"],
            models_import_s=out["models_import_s"],
        )
        return result

    def sweep(self, launcher: list[str], stem: str) -> dict[str, Any]:
        """A 4-job multirun, without OMP_NUM_THREADS: the launcher's own thread behaviour."""
        sweep_dir, clocks = self.unique(stem), self.unique(stem).with_suffix(".clocks")
        cmd = [sys.executable, "-m", "ablab.train", "-m", "seed=0,1,2,3",
               f"trainer.max_epochs={self.sizes.sweep_epochs}", *launcher,
               f"hydra.sweep.dir={sweep_dir}",
               "+callbacks.bench_clock._target_=clock.StepClock",
               f"+callbacks.bench_clock.folder={clocks}"]  # fmt: skip
        result = self.spawn(cmd, stem, threads=None)
        records = [json.loads(p.read_text()) for p in sorted(clocks.glob("*.json"))]
        if len(records) != 4:
            raise BenchError(f"{' '.join(cmd)}: {len(records)} of 4 jobs reported their steps")
        result["job_threads"] = [r["threads"] for r in records]
        result["job_omp_num_threads"] = [r["omp_num_threads"] for r in records]
        result["job_processes"] = len({r["pid"] for r in records})
        shutil.rmtree(sweep_dir, ignore_errors=True)
        return result

    def paired(self, left: list[str], right: list[str], stem: str) -> dict[str, Any]:
        """Two commands at once, each pinned to its own core (swapped on every call): the
        same host conditions for both, so their step times compare within one run.

        ``left`` is an ablab command, ``right`` an ablab command or ``bench/raw_loop.py``
        (which then runs until ``left`` has ended: its ``--stop-file`` is created then). Both
        wait at a file barrier before their first step. Each side's step time is a full batch's
        over the optimizer steps both sides ran at the same time (:func:`common_window`,
        :func:`full_batch_step_s`), epoch 0 excluded on each side.
        """
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise BenchError("a paired measurement needs two cores")
        # Swapped per arm: each arm alternates its cores from repeat to repeat.
        self.pairs[stem] = self.pairs.get(stem, 0) + 1
        pins = (cores[0], cores[1]) if self.pairs[stem] % 2 else (cores[1], cores[0])
        stop = self.unique(stem).with_suffix(".stop")
        barrier = self.unique(stem).with_suffix(".barrier")  # both start training together
        sides = []
        for cmd, pin, name in ((left, pins[0], "left"), (right, pins[1], "right")):
            clock = self.unique(f"{stem}-{name}").with_suffix(".clock.json")
            if cmd[1] == "-m":  # python -m ablab.train ...
                cmd = [*cmd, f"hydra.run.dir={self.unique(f'{stem}-{name}')}",
                       "+callbacks.bench_clock._target_=clock.StepClock",
                       f"+callbacks.bench_clock.path={clock}",
                       f"+callbacks.bench_clock.barrier={barrier}"]  # fmt: skip
            else:
                cmd = [*cmd, "--stop-file", str(stop), "--barrier", str(barrier)]
            log = self.unique(f"{stem}-{name}").with_suffix(".log")
            out = log.open("w")
            proc = subprocess.Popen(
                cmd, cwd=self.root, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=lambda pin=pin: os.sched_setaffinity(0, {pin}),
            )  # fmt: skip
            sides.append({"proc": proc, "out": out, "log": log, "clock": clock, "core": pin,
                          "tic": time.perf_counter()})  # fmt: skip

        def wait(side: dict[str, Any], other: dict[str, Any]) -> None:
            _, status, usage = os.wait4(side["proc"].pid, 0)
            side["wall_s"] = time.perf_counter() - side["tic"]  # its own spawn to exit
            side["status"], side["max_rss_mib"] = status, usage.ru_maxrss / 1024
            if side is sides[0]:
                stop.touch()  # the raw loop stops after its current epoch
            if os.waitstatus_to_exitcode(status) != 0 and other["proc"].poll() is None:
                other["proc"].kill()  # it would wait at the barrier for ever

        waiters = [
            threading.Thread(target=wait, args=(sides[0], sides[1])),
            threading.Thread(target=wait, args=(sides[1], sides[0])),
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        for side in sides:
            side["out"].close()
            if os.waitstatus_to_exitcode(side["status"]) != 0:
                tail = side["log"].read_text(errors="replace")[-3000:]
                raise BenchError(f"{side['proc'].args} failed; {side['log']} ends:\n{tail}")
        records = []
        for side in sides:
            if side["clock"].exists():
                record = json.loads(side["clock"].read_text())
            else:
                record = json.loads(side["log"].read_text().strip().splitlines()[-1])
            records.append(record["epochs"])
            side["barrier_wait_s"] = record["barrier_wait_s"]
        lo, hi = common_window(records)
        steps = [window_steps(epochs, lo, hi) for epochs in records]
        if min(len(s) for s in steps) < 1:
            raise BenchError(f"{stem}: the two processes never trained at the same time")
        return {
            "left_step_s": full_batch_step_s(steps[0]),
            "right_step_s": full_batch_step_s(steps[1]),
            "left_steps": len(steps[0]),
            "right_steps": len(steps[1]),
            "window_s": hi - lo,
            "cores": [side["core"] for side in sides],
            "left_max_rss_mib": sides[0]["max_rss_mib"],
            "right_max_rss_mib": sides[1]["max_rss_mib"],
            # spawn to exit, less the wait for the other side at the barrier
            "left_wall_s": sides[0]["wall_s"] - sides[0]["barrier_wait_s"],
            "right_wall_s": sides[1]["wall_s"] - sides[1]["barrier_wait_s"],
            "barrier_wait_s": [side["barrier_wait_s"] for side in sides],
        }


def common_window(records: list[list[dict[str, Any]]]) -> tuple[float, float]:
    """From the latest start of a timed epoch (epoch 1) to the earliest last step, over sides."""
    timed = [[e for e in epochs if e["batch_ends"]][1:] for epochs in records]
    if not all(timed):
        raise BenchError("a paired side trained fewer than two epochs")
    return max(t[0]["start"] for t in timed), min(t[-1]["batch_ends"][-1] for t in timed)


def window_steps(epochs: list[dict[str, Any]], lo: float, hi: float) -> list[tuple[float, int]]:
    """(seconds, images) of each optimizer step inside [lo, hi], epoch 0 left out (warm-up);
    a step's seconds run from the previous step's end, or from its epoch's start."""
    steps = []
    for epoch in [e for e in epochs if e["batch_ends"]][1:]:
        marks = [epoch["start"], *epoch["batch_ends"]]
        steps += [
            (b - a, n)
            for (a, b), n in zip(itertools.pairwise(marks), epoch["images"], strict=True)
            if a >= lo and b <= hi
        ]
    return steps


def full_batch_step_s(steps: list[tuple[float, int]]) -> float:
    """Seconds per image × the largest batch: the step time of a full batch, so that a window
    holding an epoch's short last batch on one side only does not bias the comparison."""
    return sum(s for s, _ in steps) / sum(n for _, n in steps) * max(n for _, n in steps)


def clock_figures(record: dict[str, Any]) -> dict[str, Any]:
    """Per-step seconds = sum over epochs >= 1 of (last batch end − epoch start) / their steps."""
    epochs = [e for e in record["epochs"] if e["batch_ends"]]
    timed = epochs[1:] or epochs  # epoch 0 is warm-up (a one-epoch run keeps it)
    seconds = sum(e["batch_ends"][-1] - e["start"] for e in timed)
    steps = sum(len(e["batch_ends"]) for e in timed)
    counts = [n for e in timed for n in e["images"]]
    return {
        "step_s": seconds / steps,
        "images_per_s": sum(counts) / seconds if None not in counts else None,
        "steps": sum(len(e["batch_ends"]) for e in epochs),
        "epochs": len(epochs),
        "threads": record["threads"],
        "first_step_time": epochs[0]["batch_ends"][0],
    }


# --- the arms --------------------------------------------------------------------------------


def lenet_arms(bench: Bench) -> list[Arm]:
    epochs = bench.sizes.lenet_epochs
    train = [sys.executable, "-m", "ablab.train", f"trainer.max_epochs={epochs}"]
    raw = [sys.executable, str(BENCH / "raw_loop.py"), "--threads", "1"]
    return [
        Arm("ablab", "aeg", lambda: bench.ablab([f"trainer.max_epochs={epochs}"], "ablab")),
        Arm("raw", "aeg", lambda: bench.raw(["--epochs", str(epochs), "--threads", "1"], "raw")),
        # The raw loop runs until ablab has ended: --epochs only sets its schedule's length.
        Arm("paired: ablab | raw", "ag",
            lambda: bench.paired(train, [*raw, "--epochs", str(RAW_EPOCHS)], "pair-raw")),
        Arm("paired: ablab | ablab logger=null", "cg",
            lambda: bench.paired(train, [*train, "logger=null"], "pair-nolog")),
    ]  # fmt: skip


def import_arms(bench: Bench) -> list[Arm]:
    def python(code: str, stem: str) -> Callable[[], dict[str, Any]]:
        return lambda: bench.spawn([sys.executable, "-c", code], stem)

    return [
        Arm("import stack", "eg", python(IMPORT_STACK, "imports")),
        Arm("import torch", "eg", python("import torch", "torch")),
    ]


def resnet20_arms(bench: Bench) -> list[Arm]:
    s = bench.sizes
    train = [sys.executable, "-m", "ablab.train", "model=resnet20", "data=synthetic",
             "data.image_size=32", "data.in_channels=3", "data.batch_size=128",
             f"data.samples_per_class={s.resnet20_per_class}",
             f"trainer.max_epochs={s.resnet20_epochs}"]  # fmt: skip
    raw = [sys.executable, str(BENCH / "raw_loop.py"), "--model", "resnet20",
           "--data", "synthetic", "--channels", "3", "--size", "32", "--batch", "128",
           "--per-class", str(s.resnet20_per_class), "--epochs", str(RAW_EPOCHS),
           "--threads", "1"]  # fmt: skip
    return [
        Arm(
            "paired: ablab resnet20 | raw resnet20",
            "bg",
            lambda: bench.paired(train, raw, "pair-r20"),
        )
    ]


def sweep_arms(bench: Bench) -> list[Arm]:
    one_job = [f"trainer.max_epochs={bench.sizes.sweep_epochs}"]

    def single() -> dict[str, Any]:  # the ideal's unit: one job alone, the same environment
        result = bench.spawn(
            [sys.executable, "-m", "ablab.train", *one_job,
             f"hydra.run.dir={bench.unique('single')}"],
            "single", threads=None,
        )  # fmt: skip
        return result

    return [
        Arm("sweep basic", "fg", lambda: bench.sweep([], "sweep-basic")),
        Arm(
            "sweep local_parallel",
            "fg",
            lambda: bench.sweep(["hydra/launcher=local_parallel"], "sweep-parallel"),
        ),
        Arm("sweep one job", "fg", single),
    ]


def augmentation_arms(bench: Bench, pipelines: list) -> list[Arm]:
    def measure(p) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            p.measure()
            return {"wall_s": p.wall[-1], "cpu_s": p.cpu[-1]}

        return run

    return [Arm(f"aug {p.name}", "d", measure(p)) for p in pipelines]  # one thread each


GPU_VARIANTS = {  # name: (ablab overrides, raw loop options)
    "fp32": (["trainer.precision=32-true"], []),
    "bf16": (["trainer.precision=bf16-mixed"], ["--amp", "bf16"]),
    "bf16 channels-last": (
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
        ["--amp", "bf16", "--channels-last"],
    ),
    "bf16 channels-last compile": (
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true", "trainer.compile=true"],
        ["--amp", "bf16", "--channels-last", "--compile"],
    ),
}


def gpu_arms(bench: Bench) -> list[Arm]:
    s = bench.sizes
    base = ["model=resnet18", "data=synthetic", "data.image_size=32", "data.in_channels=3",
            "data.batch_size=128", f"data.samples_per_class={s.gpu_per_class}", "trainer=gpu",
            f"trainer.max_epochs={s.gpu_epochs}"]  # fmt: skip
    raw = ["--model", "resnet18", "--data", "synthetic", "--channels", "3", "--size", "32",
           "--batch", "128", "--per-class", str(s.gpu_per_class), "--epochs", str(s.gpu_epochs),
           "--threads", "1", "--device", "cuda"]  # fmt: skip
    arms = []
    for name, (overrides, options) in GPU_VARIANTS.items():
        stem = name.replace(" ", "-")
        arms.append(
            Arm(f"gpu ablab {name}", "hg", lambda o=overrides, t=stem: bench.ablab(base + o, t))
        )
        arms.append(
            Arm(f"gpu raw {name}", "hg", lambda o=options, t=stem: bench.raw(raw + o, "raw-" + t))
        )
    return arms


# --- statistics and the report ---------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def per_repeat(repeats: list[dict], fn: Callable[[dict], float]) -> dict[str, Any]:
    """``fn`` of each repeat's arms (a ratio of two arms of the same repeat), then stats."""
    values = [fn(r) for r in repeats]
    return {"values": values, **stats(values)}


def arm_values(repeats: list[dict], arm: str, key: str) -> dict[str, Any]:
    return per_repeat(repeats, lambda r: r[arm][key])


def fmt(s: dict[str, float], digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """median [min–max]"""
    m, lo, hi = (scale * s[k] for k in ("median", "min", "max"))
    return f"{m:.{digits}f}{unit} [{lo:.{digits}f}–{hi:.{digits}f}]"


def summarise(repeats: list[dict], cores: int) -> dict[str, Any]:
    """Every comparison, as per-repeat values and their median, min and max."""
    have = set(repeats[0]) if repeats else set()
    out: dict[str, Any] = {}

    def ratio(num: str, den: str, key: str, den_key: str | None = None) -> dict[str, Any]:
        return per_repeat(repeats, lambda r: r[num][key] / r[den][den_key or key])

    pair_a = "paired: ablab | raw"
    pair_b = "paired: ablab resnet20 | raw resnet20"
    pair_c = "paired: ablab | ablab logger=null"
    if {"ablab", "raw"} <= have:
        out["a"] = {"sequential_throughput_ratio": ratio("raw", "ablab", "step_s")}
        # judged: both processes at once, one core each (Bench.paired); else one at a time
        out["a"]["throughput_ratio"] = (
            ratio(pair_a, pair_a, "right_step_s", "left_step_s")
            if pair_a in have
            else out["a"]["sequential_throughput_ratio"]
        )
        if pair_a in have:
            out["a"] |= {
                "paired_ablab_step_s": arm_values(repeats, pair_a, "left_step_s"),
                "paired_raw_step_s": arm_values(repeats, pair_a, "right_step_s"),
                "paired_steps": arm_values(repeats, pair_a, "left_steps"),
            }
        out["a"] |= {
            # one process at a time
            "ablab_step_s": arm_values(repeats, "ablab", "step_s"),
            "raw_step_s": arm_values(repeats, "raw", "step_s"),
            "ablab_wall_s": arm_values(repeats, "ablab", "wall_s"),
            "raw_wall_s": arm_values(repeats, "raw", "wall_s"),
            "wall_ratio": ratio("ablab", "raw", "wall_s"),
            "ablab_rss_mib": arm_values(repeats, "ablab", "max_rss_mib"),
            "raw_rss_mib": arm_values(repeats, "raw", "max_rss_mib"),
            "rss_ratio": ratio("ablab", "raw", "max_rss_mib"),
            "ablab_cpu_s": arm_values(repeats, "ablab", "cpu_s"),
            "raw_cpu_s": arm_values(repeats, "raw", "cpu_s"),
            "cpu_ratio": ratio("ablab", "raw", "cpu_s"),
        }
    if pair_b in have:
        out["b"] = {
            "throughput_ratio": ratio(pair_b, pair_b, "right_step_s", "left_step_s"),
            "ablab_step_s": arm_values(repeats, pair_b, "left_step_s"),
            "raw_step_s": arm_values(repeats, pair_b, "right_step_s"),
            "paired_steps": arm_values(repeats, pair_b, "left_steps"),
            "ablab_wall_s": arm_values(repeats, pair_b, "left_wall_s"),
            "ablab_rss_mib": arm_values(repeats, pair_b, "left_max_rss_mib"),
            "raw_rss_mib": arm_values(repeats, pair_b, "right_max_rss_mib"),
        }
    if pair_c in have:
        out["c"] = {
            "mlflow_step_s": arm_values(repeats, pair_c, "left_step_s"),
            "null_step_s": arm_values(repeats, pair_c, "right_step_s"),
            "step_overhead_pct": per_repeat(
                repeats,
                lambda r: 100 * (r[pair_c]["left_step_s"] / r[pair_c]["right_step_s"] - 1),
            ),
            "paired_steps": arm_values(repeats, pair_c, "left_steps"),
            "mlflow_wall_s": arm_values(repeats, pair_c, "left_wall_s"),
            "null_wall_s": arm_values(repeats, pair_c, "right_wall_s"),
            "wall_difference_s": per_repeat(
                repeats, lambda r: r[pair_c]["left_wall_s"] - r[pair_c]["right_wall_s"]
            ),
            "rss_difference_mib": per_repeat(
                repeats,
                lambda r: r[pair_c]["left_max_rss_mib"] - r[pair_c]["right_max_rss_mib"],
            ),
        }
    if {"ablab", "raw"} <= have:
        e = {
            "ablab_first_step_s": arm_values(repeats, "ablab", "first_step_s"),
            "raw_first_step_s": arm_values(repeats, "raw", "first_step_s"),
            "raw_models_import_s": arm_values(repeats, "raw", "models_import_s"),
            "difference_s": per_repeat(
                repeats, lambda r: r["ablab"]["first_step_s"] - r["raw"]["first_step_s"]
            ),
        }
        for arm, key in (("import stack", "import_stack_s"), ("import torch", "import_torch_s")):
            if arm in have:
                e[key] = arm_values(repeats, arm, "wall_s")
        if "import stack" in have:
            e["ablab_minus_import_stack_s"] = per_repeat(
                repeats, lambda r: r["ablab"]["first_step_s"] - r["import stack"]["wall_s"]
            )
        out["e"] = e
    if {"sweep basic", "sweep local_parallel", "sweep one job"} <= have:

        def ideal(r: dict) -> float:
            return r["sweep one job"]["wall_s"] * 4 / cores

        out["f"] = {
            "basic_wall_s": arm_values(repeats, "sweep basic", "wall_s"),
            "parallel_wall_s": arm_values(repeats, "sweep local_parallel", "wall_s"),
            "one_job_wall_s": arm_values(repeats, "sweep one job", "wall_s"),
            "ideal_wall_s": per_repeat(repeats, ideal),
            "basic_over_ideal": per_repeat(
                repeats, lambda r: r["sweep basic"]["wall_s"] / ideal(r)
            ),
            "parallel_over_ideal": per_repeat(
                repeats, lambda r: r["sweep local_parallel"]["wall_s"] / ideal(r)
            ),
            "basic_over_parallel": ratio("sweep basic", "sweep local_parallel", "wall_s"),
        }
    batched, per_sample = AUG_BATCHED, AUG_PER_SAMPLE
    if {batched, f"{per_sample} 0 workers", f"{per_sample} 2 workers"} <= have:
        out["d"] = {  # per-sample wall / batched wall = batched throughput / per-sample's
            f"batched_over_per_sample_{w}_workers": per_repeat(
                repeats,
                lambda r, w=w: r[f"{per_sample} {w} workers"]["wall_s"] / r[batched]["wall_s"],
            )
            for w in (0, 2)
        }
    gpu = [name for name in GPU_VARIANTS if f"gpu ablab {name}" in have]
    if gpu:
        out["h"] = {
            name: {
                "ablab_images_per_s": arm_values(repeats, f"gpu ablab {name}", "images_per_s"),
                "raw_images_per_s": arm_values(repeats, f"gpu raw {name}", "images_per_s"),
                "ratio": ratio(f"gpu ablab {name}", f"gpu raw {name}", "images_per_s"),
            }
            for name in gpu
        }
    rss = {}
    for arm, values in (repeats[0] if repeats else {}).items():
        if "max_rss_mib" in values:
            rss[arm] = arm_values(repeats, arm, "max_rss_mib")
        if "left_max_rss_mib" in values:  # "paired: left | right"
            for side, name in zip(
                ("left", "right"), arm.split(": ", 1)[1].split(" | "), strict=True
            ):
                rss[f"{name} (paired)"] = arm_values(repeats, arm, f"{side}_max_rss_mib")
    out["g"] = rss
    return out


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the medians."""
    rows = []

    def add(name: str, group: str, key: str, op: str, threshold: float, unit: str) -> None:
        if group not in summary:
            return
        s = summary[group][key]
        value = s["median"]
        met = value >= threshold if op == ">=" else value <= threshold
        rows.append(
            {"target": name, "value": value, "min": s["min"], "max": s["max"],
             "op": op, "threshold": threshold, "unit": unit, "met": met}
        )  # fmt: skip

    add("default job per-step throughput (raw step / ablab step)", "a", "throughput_ratio",
        ">=", 0.8, "x")  # fmt: skip
    add("default job whole wall (ablab / raw)", "a", "wall_ratio", "<=", 1.4, "x")
    add("resnet20 per-step throughput (raw step / ablab step)", "b", "throughput_ratio",
        ">=", 0.95, "x")  # fmt: skip
    add("MLflow per-step overhead (% of the logger=null step)", "c", "step_overhead_pct",
        "<=", 2.0, "%")  # fmt: skip
    add("start to first step, ablab − raw (s)", "e", "difference_s", "<=", 3.0, " s")
    return rows


def machine(load_before: tuple, load_after: tuple, argv: list[str]) -> dict[str, Any]:
    cpu, memory = platform.processor() or platform.machine(), None
    if Path("/proc/cpuinfo").exists():
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024**2  # KiB -> GiB
    versions = {}
    for dist in ("torch", "pytorch-lightning", "mlflow", "hydra-core", "torchvision", "kornia"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    omp = os.environ.get("OMP_NUM_THREADS")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": list(load_before),
        "load_after": list(load_after),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": (f"OMP_NUM_THREADS={omp} " if omp else "")
        + " ".join([Path(sys.executable).name, *argv]),
        "commit": commit,
    }


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]


def report(results: dict[str, Any]) -> str:
    """RESULTS.md: every number from ``results``."""
    m, s, sz = results["machine"], results["summary"], results["sizes"]
    n, cores = results["repeats_done"], m["cores"]
    load = ", ".join(f"{v:.2f}" for v in m["load_before"])
    load_after = ", ".join(f"{v:.2f}" for v in m["load_after"])
    v = m["versions"]
    lines = [
        "# ablab benchmark (`make bench`)",
        "",
        "<!-- generated by bench/run.py; do not edit: rerun `make bench` -->",
        "",
        f"Each figure is median [min–max] over {n} round-robin repeats (every repeat runs every "
        "arm once, so load drift hits all arms alike); ratios are taken within a repeat. "
        "Step time: the mean step over epochs >= 1 (epoch 0 is warm-up), from the epoch's start "
        "to its last optimizer step (validation excluded); whole wall: spawn to exit, measured "
        "by the parent. Every process runs one torch thread (`OMP_NUM_THREADS=1`; the raw loop "
        "`--threads 1`) except the sweep arms (f).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {cores} logical cores, {m['memory_gib']:.1f} GiB memory; "
        f"{m['platform']}",
        f"- Python {m['python']}, torch {v['torch']}, Lightning {v['pytorch-lightning']}, "
        f"MLflow {v['mlflow']}, Hydra {v['hydra-core']}, torchvision {v['torchvision']}, "
        f"kornia {v['kornia']}",
        f"- load average (1, 5, 15 min) before: {load}; after: {load_after}",
        f"- date: {m['date']}; commit {m['commit']}; total bench wall "
        f"{results['total_wall_s']:.0f} s",
        f"- command: `{m['command']}`",
        "",
        "## Targets (issue 15), judged on the median",
        "",
    ]
    rows = [
        [t["target"], f"{t['op']} {t['threshold']:g}{t['unit']}",
         f"{t['value']:.2f}{t['unit']} [{t['min']:.2f}–{t['max']:.2f}]",
         "met" if t["met"] else "**not met**"]
        for t in results["targets"]
    ]  # fmt: skip
    lines += table(["target", "wanted", "measured", ""], rows) if rows else ["(none run)", ""]

    if "warmup" in results:
        w = results["warmup"]
        lines += [
            "## One-time cost: the first run in a fresh root",
            "",
            f"The warm-up run (default job, {sz['lenet_epochs']} epochs) created the MLflow store "
            f"(sqlite schema and migrations) and ran on cold caches: {w['wall_s']:.1f} s whole, "
            f"{w['first_step_s']:.1f} s to its first step"
            + (
                f"; {w['wall_s'] - s['a']['ablab_wall_s']['median']:+.1f} s and "
                f"{w['first_step_s'] - s['e']['ablab_first_step_s']['median']:+.1f} s against the "
                "timed runs' medians, which reuse the store."
                if "a" in s and "e" in s
                else "."
            ),
            "",
        ]
    paired_note = (
        "Paired: both processes at once, each pinned to its own core (swapped every repeat), "
        "starting their first step together (a file barrier), so host speed drift hits both "
        "alike; each side's step time is a full batch's, from its seconds per image over the "
        "steps both trained at the same time (epoch 0 left out); the raw loop runs until the "
        "ablab job has ended. Sequential: one process at a time, as the other arms."
    )
    if "a" in s:
        a = s["a"]
        threads = [
            sorted({r[arm]["threads"] for r in results["repeats"]}) for arm in ("ablab", "raw")
        ]
        lines += [
            f"## {TITLES['a']}",
            "",
            f"LeNet-5 on digits, batch 64, Adam 0.01, cosine, {sz['lenet_epochs']} epochs; "
            "`python -m ablab.train` with every default (MLflow, checkpoints, progress bar, "
            f"metrics) vs `bench/raw_loop.py`. {paired_note}",
            "",
            *table(
                ["quantity", "ablab", "raw loop", "ratio"],
                ([["step time, paired (ms)", fmt(a["paired_ablab_step_s"], 2, 1e3),
                   fmt(a["paired_raw_step_s"], 2, 1e3), f"raw/ablab {fmt(a['throughput_ratio'], 3)}"]]
                 if "paired_ablab_step_s" in a else []) + [
                    ["step time, sequential (ms)", fmt(a["ablab_step_s"], 1, 1e3),
                     fmt(a["raw_step_s"], 1, 1e3), f"raw/ablab {fmt(a['sequential_throughput_ratio'])}"],
                    ["whole wall, sequential (s)", fmt(a["ablab_wall_s"], 1), fmt(a["raw_wall_s"], 1),
                     f"ablab/raw {fmt(a['wall_ratio'])}"],
                    ["max RSS (MiB)", fmt(a["ablab_rss_mib"], 0), fmt(a["raw_rss_mib"], 0),
                     f"ablab/raw {fmt(a['rss_ratio'])}"],
                    ["torch threads", str(threads[0]), str(threads[1]), ""],
                    ["CPU time, sequential (s)", fmt(a["ablab_cpu_s"], 1), fmt(a["raw_cpu_s"], 1),
                     f"ablab/raw {fmt(a['cpu_ratio'])}"],
                ],
            ),
            (f"Steps timed together per paired repeat: {fmt(a['paired_steps'], 0)}."
             if "paired_steps" in a else f"Not paired: {results['skipped'].get('paired')}."),
            "",
        ]  # fmt: skip
    if "b" in s:
        b = s["b"]
        lines += [
            f"## {TITLES['b']}",
            "",
            f"ResNet-20 on synthetic 3x32x32, batch 128, {sz['resnet20_epochs']} epochs, paired "
            f"only (the per-step target is this measurement's one). {paired_note}",
            "",
            *table(
                ["quantity", "ablab", "raw loop", "ratio"],
                [
                    ["step time, paired (ms)", fmt(b["ablab_step_s"], 1, 1e3),
                     fmt(b["raw_step_s"], 1, 1e3), f"raw/ablab {fmt(b['throughput_ratio'], 3)}"],
                    ["max RSS (MiB)", fmt(b["ablab_rss_mib"], 0), fmt(b["raw_rss_mib"], 0), ""],
                    ["whole wall, paired (s)", fmt(b["ablab_wall_s"], 1), "", ""],
                ],
            ),
            f"Steps timed together per repeat: {fmt(b['paired_steps'], 0)}.",
            "",
        ]  # fmt: skip
    if "c" in s:
        c = s["c"]
        lines += [
            f"## {TITLES['c']}",
            "",
            "The default job (MLflow every `trainer.log_every_n_steps`, system metrics, "
            "checkpoint artifacts) against the same command with `logger=null`, paired: both at "
            "once, one core each (swapped every repeat); step times over the steps both trained "
            "at the same time. Whole wall: each process's spawn to exit, run side by side.",
            "",
            *table(
                ["quantity", "MLflow", "logger=null", "difference"],
                [
                    [
                        "step time (ms)",
                        fmt(c["mlflow_step_s"], 2, 1e3),
                        fmt(c["null_step_s"], 2, 1e3),
                        fmt(c["step_overhead_pct"], 1, unit=" %"),
                    ],
                    [
                        "whole wall (s)",
                        fmt(c["mlflow_wall_s"], 1),
                        fmt(c["null_wall_s"], 1),
                        fmt(c["wall_difference_s"], 1, unit=" s"),
                    ],
                    ["max RSS", "", "", fmt(c["rss_difference_mib"], 0, unit=" MiB")],
                ],
            ),
        ]
    if "d" in results:
        lines += [f"## {TITLES['d']}", ""]
        if "d" in s:
            lines += [
                "Batched kornia + DataLoader throughput over the per-sample pipeline's, per "
                f"repeat: {fmt(s['d']['batched_over_per_sample_0_workers'])} with 0 workers, "
                f"{fmt(s['d']['batched_over_per_sample_2_workers'])} with 2 workers.",
                "",
            ]
        lines += results["d"]["markdown"]
    if "e" in s:
        e = s["e"]
        rows = [
            ["ablab default job: spawn to first `on_train_batch_end`", fmt(e["ablab_first_step_s"])],
            ["raw loop: spawn to end of first optimizer step", fmt(e["raw_first_step_s"])],
            ["… of which the raw loop importing and building its network (`ablab.models`)", fmt(e["raw_models_import_s"])],
            ["ablab − raw", fmt(e["difference_s"])],
        ]  # fmt: skip
        if "import_stack_s" in e:
            rows += [
                [f'`python -c "{IMPORT_STACK}"` (whole wall)', fmt(e["import_stack_s"])],
                ['`python -c "import torch"` (whole wall)', fmt(e["import_torch_s"])],
                ["ablab − the import stack", fmt(e["ablab_minus_import_stack_s"])],
            ]
        lines += [f"## {TITLES['e']}", "", *table(["seconds", ""], rows)]
    if "f" in s:
        f = s["f"]
        basic = results["repeats"][0]["sweep basic"]
        parallel = results["repeats"][0]["sweep local_parallel"]
        lines += [
            f"## {TITLES['f']}",
            "",
            f"`python -m ablab.train -m seed=0,1,2,3 trainer.max_epochs={sz['sweep_epochs']}`, "
            "run without `OMP_NUM_THREADS` so each launcher's own thread behaviour is measured. "
            f"Ideal: one job's whole wall × 4 / {cores} cores. Torch threads per job (from "
            f"`bench/clock.py`, first repeat): basic {basic['job_threads']} in "
            f"{basic['job_processes']} process(es); local_parallel {parallel['job_threads']} in "
            f"{parallel['job_processes']} processes, OMP_NUM_THREADS there "
            f"{parallel['job_omp_num_threads']}.",
            "",
            *table(
                ["arm", "whole wall (s)", "over ideal"],
                [
                    [
                        "basic launcher (sequential, one process)",
                        fmt(f["basic_wall_s"], 1),
                        fmt(f["basic_over_ideal"]),
                    ],
                    [
                        "local_parallel (joblib, n_jobs 2)",
                        fmt(f["parallel_wall_s"], 1),
                        fmt(f["parallel_over_ideal"]),
                    ],
                    ["one job alone", fmt(f["one_job_wall_s"], 1), ""],
                    [f"ideal (one job × 4 / {cores})", fmt(f["ideal_wall_s"], 1), "1"],
                ],
            ),
            f"basic / local_parallel: {fmt(f['basic_over_parallel'])}.",
            "",
        ]
    if s.get("g"):
        lines += [
            f"## {TITLES['g']}",
            "",
            "`ru_maxrss` from `os.wait4` on each child (Linux: the largest of the process and its "
            "waited-for descendants, so a sweep's figure is its largest process).",
            "",
            *table(["arm", "max RSS (MiB)"], [[a, fmt(v, 0)] for a, v in s["g"].items()]),
        ]
    lines += [f"## {TITLES['h']}", ""]
    if "h" in s:
        rows = [
            [name, fmt(h["ablab_images_per_s"], 0), fmt(h["raw_images_per_s"], 0),
             fmt(h["ratio"])]
            for name, h in s["h"].items()
        ]  # fmt: skip
        lines += [
            f"ResNet-18 at 32 px, batch 128, {sz['gpu_per_class'] * 10} synthetic images, "
            f"{sz['gpu_epochs']} epochs; images/s over epochs >= 1.",
            "",
            *table(["variant", "ablab images/s", "raw images/s", "ablab/raw"], rows),
        ]
    else:
        lines += [f"Skipped: {results['skipped'].get('h', 'not selected')}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=GROUPS, help="comma-separated measurements, e.g. a,c")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    only = set(args.only.replace(",", ""))
    if not only <= set(GROUPS) or args.repeats < 1:
        parser.error(f"--only takes letters of {GROUPS}; --repeats at least 1")
    sizes = QUICK if args.quick else Sizes()
    started, load_before = time.perf_counter(), os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="ablab-bench-"))
    bench = Bench(root, sizes)
    results: dict[str, Any] = {
        "only": "".join(sorted(only)),
        "sizes": sizes.__dict__,
        "quick": args.quick,
        "skipped": {},
    }

    arms = lenet_arms(bench) + import_arms(bench) + resnet20_arms(bench) + sweep_arms(bench)
    if len(os.sched_getaffinity(0)) < 2:  # a and c fall back to their sequential figures
        arms = [arm for arm in arms if not arm.name.startswith("paired:")]
        results["skipped"]["paired"] = "one core: paired measurements need two"
    pipelines: list = []
    if "d" in only:
        import augmentation

        pipelines = augmentation.pipelines(sizes.aug_images, [1])
        arms += augmentation_arms(bench, pipelines)
    if "h" in only:
        import torch

        if torch.cuda.is_available():
            arms += gpu_arms(bench)
        else:
            results["skipped"]["h"] = "no CUDA GPU on this machine (torch.cuda.is_available())"
    else:
        results["skipped"]["h"] = "not selected (--only)"
    arms = [a for a in arms if only & set(a.groups)]  # g (memory): every process arm

    try:
        if any(a.name.startswith(("ablab", "sweep", "gpu")) for a in arms):
            print("warm-up: the first run creates the MLflow store", flush=True)
            results["warmup"] = bench.ablab([f"trainer.max_epochs={sizes.lenet_epochs}"], "warmup")
        for p in pipelines:
            p.run()  # warm-up
        repeats: list[dict[str, Any]] = []
        for i in range(args.repeats):
            repeat: dict[str, Any] = {}
            for arm in arms:
                tic = time.perf_counter()
                repeat[arm.name] = arm.run()
                print(f"repeat {i + 1}/{args.repeats}: {arm.name} "
                      f"{time.perf_counter() - tic:.1f} s", flush=True)  # fmt: skip
            repeats.append(repeat)
        if pipelines:
            import augmentation

            parts = augmentation.breakdown([1])
            results["d"] = {
                "images": sizes.aug_images,
                "breakdown": parts,
                "markdown": augmentation.tables(sizes.aug_images, args.repeats, pipelines, parts),
            }
    except BenchError as err:
        print(f"bench: error: {err}\n(the temporary root is kept: {root})", file=sys.stderr)
        return 1
    results["repeats"] = repeats
    results["repeats_done"] = len(repeats)
    summary = summarise(repeats, os.cpu_count() or 1)
    results["summary"] = {k: v for k, v in summary.items() if k in only or k == "g"}
    results["targets"] = targets(results["summary"])
    results["total_wall_s"] = time.perf_counter() - started
    command = ["bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    results["machine"] = machine(load_before, os.getloadavg(), command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = report(results)
    (args.out / "RESULTS.md").write_text(text)
    print(text)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
