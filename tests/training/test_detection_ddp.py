"""The detector's losses under DDP: two gloo ranks, each with half of a batch whose halves hold
unequal numbers of positives, divide the classification, box and centerness losses by the mean
positive count over the ranks, so that the gradient DDP averages is the one of a single process
on the whole batch."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ablab.models import ResNet
from ablab.models.detector import DenseDetector
from ablab.tasks.detection import DetectionModule, assign

K, SIZE, RANKS = 4, 32, 2
#: Four images: the first half holds three boxes (many positives), the second one (few).
BOXES = torch.tensor([
    [[2.0, 2.0, 14.0, 14.0], [16.0, 4.0, 30.0, 28.0]],
    [[4.0, 18.0, 12.0, 26.0], [0.0] * 4],
    [[20.0, 20.0, 24.0, 24.0], [0.0] * 4],
    [[0.0] * 4, [0.0] * 4],
])  # fmt: skip
LABELS = torch.tensor([[0, 1], [2, -1], [3, -1], [-1, -1]])


def module() -> DetectionModule:
    backbone = ResNet(3, K, depths=(1, 1, 1), widths=(8, 8, 8), stem_width=8)
    net = DenseDetector(backbone, K, fpn=True, fpn_channels=8, head_convs=1)
    return DetectionModule(net, partial(torch.optim.SGD, lr=0.0), None, K)


def outputs() -> torch.Tensor:
    """Seeded outputs (N, A, K + 5) with positive distances."""
    torch.manual_seed(0)
    out = torch.randn(len(BOXES), 8 * 8 + 4 * 4 + 2 * 2, K + 5)  # locations at 32 px
    out[..., K : K + 4] = out[..., K : K + 4].abs() + 1
    return out


PARTS = ("cls_loss", "box_loss", "ctr_loss")


def part_loss(
    task: DetectionModule, out: torch.Tensor, rows: slice, part: str
) -> tuple[float, torch.Tensor]:
    """The loss ``part`` of images ``rows`` and its gradient with respect to ``out``."""
    out = out[rows].clone().requires_grad_(True)
    points, lower, upper = task.geometry(SIZE, SIZE, "cpu")
    targets = assign(points, lower, upper, BOXES[rows], LABELS[rows])
    loss = task.losses(out, points, targets)[part]
    loss.backward()
    return loss.item(), out.grad


def rank(index: int, folder: str) -> None:
    """One rank: its half of the batch, its loss and gradient saved for the parent."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=index,
                            world_size=RANKS)  # fmt: skip
    try:
        half = len(BOXES) // RANKS
        rows = slice(index * half, (index + 1) * half)
        parts = {part: part_loss(module(), outputs(), rows, part) for part in PARTS}
        torch.save(parts, Path(folder) / f"rank{index}.pt")
    finally:
        dist.destroy_process_group()


def test_each_rank_divides_by_the_mean_positive_count_and_ddp_averages_to_the_whole_batch(
    tmp_path,
) -> None:
    mp.spawn(rank, args=(str(tmp_path),), nprocs=RANKS, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(RANKS)]
    task, out = module(), outputs()
    points, lower, upper = task.geometry(SIZE, SIZE, "cpu")
    counts = [int(assign(points, lower, upper, BOXES[s], LABELS[s]).positive.sum())
              for s in (slice(0, 2), slice(2, 4))]  # fmt: skip
    assert counts[0] > 3 * counts[1] > 0  # halves that weigh differently under their own counts
    mean = sum(counts) / RANKS
    for part in PARTS:
        whole, whole_grad = part_loss(task, out, slice(None), part)
        for r in range(RANKS):
            loss, grad = ranks[r][part]
            rows = slice(2 * r, 2 * r + 2)
            alone, _ = part_loss(task, out, rows, part)  # one process on the half: Σ / n_r
            assert loss == pytest.approx(alone * counts[r] / mean, rel=1e-5)
            # DDP averages the ranks' gradients: the whole batch's
            assert torch.allclose(grad / RANKS, whole_grad[rows], rtol=1e-5, atol=1e-8)
        # the ranks' mean loss is the whole batch's (halves of equal size); with each rank's
        # own count it would not be
        assert sum(ranks[r][part][0] for r in range(RANKS)) / RANKS == pytest.approx(
            whole, rel=1e-5
        )
        own = [part_loss(task, out, slice(2 * r, 2 * r + 2), part)[0] for r in range(RANKS)]
        assert sum(own) / RANKS != pytest.approx(whole, rel=1e-3)
