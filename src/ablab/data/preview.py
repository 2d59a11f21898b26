"""One batch as a labelled image grid, for a look at what the model is fed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a window
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor


def batch_grid(x: Tensor, y: Tensor, class_names: Sequence[str], max_images: int = 64) -> Figure:
    """A figure of up to ``max_images`` images in [0, 1], each titled with its class name."""
    n = min(len(x), max_images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i].detach().float().cpu().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(class_names[int(y[i])], fontsize=8)
    fig.tight_layout()
    return fig


def save_batch_grid(
    x: Tensor, y: Tensor, class_names: Sequence[str], path: str | Path, max_images: int = 64
) -> Path:
    """Write :func:`batch_grid` to ``path`` as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = batch_grid(x, y, class_names, max_images)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
