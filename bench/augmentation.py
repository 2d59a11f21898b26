"""Augmentation throughput: ablab's batched kornia pipeline vs per-sample torchvision v2 transforms.

The same ops on CIFAR-sized data held in memory (random uint8 32x32x3 images): zero-pad 4 + random
32 px crop, horizontal flip, colour jitter (brightness, contrast, saturation 0.4; applied with
p 0.8) and random erasing (p 0.25, value 0), the image ops of ``augmentation=strong``. Mixing is left
out: it only exists batched (timm, torchvision v2 and kornia all mix whole batches).

(a) batched: ``BatchAugment`` (kornia, per-sample draws, one call per op per batch of 128) on the
    CPU, alone on ready batches and behind the DataLoader ablab uses (TensorDataset of floats).
(b) per-sample: a ``torchvision.transforms.v2.Compose`` applied in ``Dataset.__getitem__`` to each
    uint8 tensor (v2's fastest input; no PIL), in a DataLoader with 0 and 2 worker processes.

The machine may be shared, so the pipelines are timed round-robin (every repeat runs each once,
under the same background load) and CPU time is reported next to wall time: images per CPU-second
depends far less on what else runs. Then, to see where the time goes: each op alone (batched vs a
per-sample loop), the batched pipeline at several batch sizes (a fixed cost per call shows up as
throughput rising with size), and a plain element-wise op at 1 and 2 threads.

Usage: ``python bench/augmentation.py [--images 10000] [--repeats 5] [--out FILE.md]``; ``make bench``
(``bench/run.py``) imports ``pipelines``, ``breakdown`` and ``tables`` and runs them on fewer images.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import kornia
import kornia.augmentation as K
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from ablab.data.augment import BatchAugment, batch_seed, seeded

BATCH = 128


def kornia_ops() -> dict[str, nn.Module]:
    """The image ops of ``conf/augmentation/strong.yaml`` at 32 px."""
    return {
        "crop": K.RandomCrop((32, 32), padding=4),
        "hflip": K.RandomHorizontalFlip(p=0.5),
        "jitter": K.ColorJitter(0.4, 0.4, 0.4, 0.0, p=0.8),
        "erase": K.RandomErasing(p=0.25, value=0.0),
    }


def torchvision_ops() -> dict[str, nn.Module]:
    """The same ops as torchvision v2 per-sample transforms (on uint8 CHW tensors)."""
    return {
        "crop": v2.RandomCrop(32, padding=4),
        "hflip": v2.RandomHorizontalFlip(p=0.5),
        "jitter": v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=0.8),
        "erase": v2.RandomErasing(p=0.25, value=0),
    }


class PerSample(Dataset):
    """uint8 images transformed one at a time, as a classic torchvision input pipeline does."""

    def __init__(self, x: Tensor, y: Tensor, transform: nn.Module) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.x[i]), self.y[i]


@dataclass
class Pipeline:
    """One configuration to time: a label, the torch thread count, and a full pass."""

    name: str
    threads: int
    run: Callable[[], object]
    workers: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def measure(self) -> None:
        """One pass; CPU time includes the DataLoader workers (children that have exited)."""
        torch.set_num_threads(self.threads)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        self.run()
        self.wall.append(time.perf_counter() - wall0)
        self.cpu.append(cpu_seconds() - cpu0)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its terminated children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop(transform: nn.Module, images: Tensor) -> list[Tensor]:
    """A per-sample transform applied to each image of a batch in turn."""
    return [transform(img) for img in images]


def seeding() -> None:
    """What BatchAugment adds per batch to make draws reproducible: a seed and a forked RNG."""
    with seeded(batch_seed(0, 1), torch.device("cpu"), numpy=False):  # numpy: only when mixing
        pass


def elementwise(x: Tensor) -> Tensor:
    """A few cheap element-wise ops, the kind augmentation is made of."""
    return (x * 0.5 + 0.25).clamp(0.0, 1.0)


def machine() -> list[str]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, kornia {kornia.__version__}",
        f"- torch intra-op threads by default: {torch.get_num_threads()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; DataLoader workers run "
        "1 thread each",
    ]


def pipelines(n: int, thread_counts: list[int]) -> list[Pipeline]:
    """The pipelines to time round-robin, on ``n`` random images, at each thread count."""
    g = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    x_float = x_u8.float().div_(255)  # ablab converts once, at load time
    y = torch.randint(0, 10, (n,), generator=g)
    batched = BatchAugment(kornia_ops(), seed=0)
    per_sample = v2.Compose([*torchvision_ops().values(), v2.ToDtype(torch.float32, scale=True)])

    def batched_ops() -> None:
        for i in range(0, n, BATCH):
            batched(x_float[i : i + BATCH], y[i : i + BATCH])

    def batched_loader() -> None:
        loader = DataLoader(TensorDataset(x_float, y), batch_size=BATCH, shuffle=True)
        for xb, yb in loader:
            batched(xb, yb)

    def per_sample_loader(workers: int) -> None:
        dataset = PerSample(x_u8, y, per_sample)
        for _ in DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers):
            pass

    found = [
        p
        for t in thread_counts
        for p in (
            Pipeline("(a) batched kornia, ops only", t, batched_ops),
            Pipeline("(a) batched kornia + ablab's DataLoader", t, batched_loader),
            Pipeline("(b) per-sample torchvision v2, 0 workers", t, partial(per_sample_loader, 0)),
        )
    ]
    found.append(
        Pipeline(
            "(b) per-sample torchvision v2, 2 workers", 1, partial(per_sample_loader, 2), workers=2
        )
    )
    return found


def breakdown(thread_counts: list[int]) -> dict[str, list]:
    """Where the time goes, one thread: each op alone (batched call vs per-sample loop, ms per
    batch), the batched pipeline at several batch sizes, a plain element-wise op per thread
    count, and the per-batch seeding (seconds)."""
    default_threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x_float = torch.rand(1024, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (1024,), generator=g)
    xb_float = x_float[:BATCH]
    xb_u8 = (xb_float * 255).to(torch.uint8)
    batched = BatchAugment(kornia_ops(), seed=0)
    torch.set_num_threads(1)
    per_op = []
    for (name, kop), tvop in zip(kornia_ops().items(), torchvision_ops().values(), strict=True):
        per_op.append(
            (
                name,
                timed(partial(kop, xb_float), 20),
                timed(partial(loop, tvop, xb_u8), 5),
                timed(partial(loop, tvop, xb_float), 5),
            )
        )
    scaling = [
        (size, timed(partial(batched, x_float[:size], y[:size]), 10 if size < 1024 else 3))
        for size in (16, 128, 1024)
    ]
    # Control for the thread count: a plain element-wise torch op on one batch, no kornia at all.
    threads_control = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        threads_control.append((threads, timed(partial(elementwise, xb_float), 200)))
    seeding_cost = timed(seeding, 1000)
    torch.set_num_threads(default_threads)
    return {
        "per_op": per_op,
        "scaling": scaling,
        "threads_control": threads_control,
        "seeding_s": [seeding_cost],
    }


def tables(n: int, repeats: int, timed_pipelines: list[Pipeline], parts: dict) -> list[str]:
    """The summary and the four tables (Markdown lines) from measured pipelines and breakdown."""
    thread_counts = sorted({p.threads for p in timed_pipelines if not p.workers})

    def rate(name: str, threads: int) -> float:
        (p,) = [p for p in timed_pipelines if p.name.startswith(name) and p.threads == threads]
        return n / statistics.median(p.wall)

    workers2 = rate("(b) per-sample torchvision v2, 2", 1)
    summary = [
        f"- {t} thread{'s' * (t > 1)}: batched + DataLoader is "
        f"{rate('(a) batched kornia +', t) / rate('(b) per-sample torchvision v2, 0', t):.1f}x "
        f"the per-sample pipeline in the main process and "
        f"{rate('(a) batched kornia +', t) / workers2:.1f}x it with 2 workers"
        for t in thread_counts
    ]

    def row(p: Pipeline) -> str:
        wall, cpu = statistics.median(p.wall), statistics.median(p.cpu)
        spread = f"{n / max(p.wall):,.0f}–{n / min(p.wall):,.0f}"
        threads = "1 per worker" if p.workers else str(p.threads)
        return f"| {p.name} | {threads} | {n / wall:,.0f} ({spread}) | {n / cpu:,.0f} |"

    return [
        f"{n:,} random uint8 32x32x3 images in memory, batches of {BATCH}. Ops: pad 4 + random "
        "crop, horizontal flip, colour jitter 0.4/0.4/0.4 (p 0.8), random erasing (p 0.25).",
        "",
        "Summary (wall-clock medians below):",
        "",
        *summary,
        f"- seeding each batch (SeedSequence + torch fork_rng) costs "
        f"{1e6 * parts['seeding_s'][0]:.0f} µs",
        "",
        f"Throughput (median of {repeats} round-robin repeats; wall-clock range in brackets):",
        "",
        "| pipeline | torch threads | images/s | images per CPU-second |",
        "|---|---|---|---|",
        *[row(p) for p in timed_pipelines],
        "",
        f"Each op alone, one thread: ms per {BATCH} images",
        "",
        "| op | kornia, one batched call | torchvision v2, loop over uint8 | ... over float |",
        "|---|---|---|---|",
        *[
            f"| {name} | {1e3 * tb:.2f} | {1e3 * tu:.2f} | {1e3 * tf:.2f} |"
            for name, tb, tu, tf in parts["per_op"]
        ],
        "",
        "Batched pipeline vs batch size, one thread:",
        "",
        "| batch | ms per batch | µs per image | images/s |",
        "|---|---|---|---|",
        *[
            f"| {s} | {1e3 * t:.2f} | {1e6 * t / s:.1f} | {s / t:,.0f} |"
            for s, t in parts["scaling"]
        ],
        "",
        "Thread-count control, `(x * 0.5 + 0.25).clamp(0, 1)` on one batch:",
        "",
        "| torch threads | µs |",
        "|---|---|",
        *[f"| {t} | {1e6 * tc:.0f} |" for t, tc in parts["threads_control"]],
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    thread_counts = sorted({1, torch.get_num_threads()})
    timed_pipelines = pipelines(args.images, thread_counts)
    load_before = os.getloadavg()
    for p in timed_pipelines:  # warm-up
        p.run()
    for _ in range(args.repeats):  # round-robin: every pipeline sees the same background load
        for p in timed_pipelines:
            p.measure()
    parts = breakdown(thread_counts)
    load_after = os.getloadavg()
    lines = [
        "# Augmentation throughput: batched (kornia) vs per-sample (torchvision v2)",
        "",
        "Generated by `python bench/augmentation.py`; do not edit by hand. `make bench` "
        "(`bench/run.py`) runs the same pipelines among its other measurements.",
        "",
        "## Machine",
        "",
        *machine(),
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}",
        "",
        "## Results",
        "",
        *tables(args.images, args.repeats, timed_pipelines, parts),
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
