"""Procedural box sets: scales and aspects follow the distributions asked for (Kolmogorov–Smirnov),
the skew moves the median area, draws repeat by seed and index, batches read like detection
data's, and bad input is one line."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ablab.data.box_sets import BoxSetsDataModule, beta_parameters
from ablab.data.shapes_det import unpack
from ablab.errors import ConfigError
from ablab.tasks.anchors import box_sides


def data(**kw) -> BoxSetsDataModule:
    dm = BoxSetsDataModule(**{"n_train": 2000, "n_val": 100, "n_test": 100, **kw})
    dm.setup("fit")
    return dm


def sides(dm: BoxSetsDataModule, split: str = "train") -> torch.Tensor:
    _, boxes, labels = dm.splits[split].tensors
    return box_sides(boxes, labels)


@pytest.mark.parametrize("skew", ["small", "large", "uniform"])
def test_scales_and_aspects_have_the_distributions_asked_for(skew: str) -> None:
    # max_size 0.3 with aspect_sigma 0.5: no side reaches the image's, none is capped
    dm = data(skew=skew, min_size=0.05, max_size=0.3, aspect_sigma=0.5, image_size=100)
    wh = sides(dm)
    assert wh.max() < 100
    scale = wh.prod(dim=1).sqrt() / 100  # s = √(w·h), as a fraction of the image
    assert scale.min() >= 0.05 - 1e-6 and scale.max() <= 0.3 + 1e-6
    u = (scale / 0.05).log() / math.log(0.3 / 0.05)  # the position on the log scale
    a, b = beta_parameters(skew, 3.0)
    assert stats.kstest(u.numpy(), stats.beta(a, b).cdf).pvalue > 0.01
    log_ratio = (wh[:, 0] / wh[:, 1]).log()
    assert stats.kstest(log_ratio.numpy(), stats.norm(0, 0.5).cdf).pvalue > 0.01


def test_skew_small_puts_the_median_area_below_skew_large() -> None:
    medians = {
        skew: sides(data(skew=skew)).prod(dim=1).median().item()
        for skew in ("small", "uniform", "large")
    }
    assert medians["small"] < medians["uniform"] < medians["large"]
    # median scale 0.05 · 16^0.21 = 0.089 (5.7 px) skewed small, 0.05 · 16^0.79 = 0.45 large
    assert math.sqrt(medians["small"]) == pytest.approx(0.089 * 64, rel=0.1)


def test_boxes_repeat_by_seed_and_index_and_lie_in_the_image() -> None:
    dm = data(skew="large")
    again = data(skew="large", n_train=50)  # fewer boxes: the first ones are the same
    assert torch.equal(dm.splits["train"].tensors[1][:50], again.splits["train"].tensors[1])
    other = data(skew="large", seed=1)
    assert not torch.equal(other.splits["train"].tensors[1], dm.splits["train"].tensors[1])
    assert not torch.equal(dm.splits["val"].tensors[1], dm.splits["test"].tensors[1])
    boxes = dm.splits["train"].tensors[1][:, 0]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
    assert (sides(dm) > 0).all() and (sides(dm) <= 64).all()  # capped at the image's side


def test_square_boxes_without_aspect_spread() -> None:
    wh = sides(data(aspect_sigma=0.0))
    torch.testing.assert_close(wh[:, 0], wh[:, 1], rtol=1e-5, atol=0)  # float32 corners


def test_batches_read_like_detection_batches() -> None:
    dm = data(batch_size=32)
    x, boxes, labels, crowd = unpack(next(iter(dm.train_dataloader())))
    assert x.shape == (32, 0)  # no image
    assert boxes.shape == (32, 1, 4) and labels.shape == (32, 1) and (labels == 0).all()
    assert not crowd.any()
    train_boxes, train_labels = dm.train_targets()
    assert train_boxes.shape == (2000, 1, 4) and train_labels.shape == (2000, 1)
    with pytest.raises(ConfigError, match="data=box_sets has boxes and no images"):
        dm.example_input()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skew": "smal"}, r"unknown data.skew 'smal' \(did you mean 'small'\?\); valid: large, "
                           r"small, uniform"),
        ({"min_size": 0.5, "max_size": 0.2}, r"0 < min_size <= max_size <= 1"),
        ({"skew_strength": 0.5}, r"data.skew_strength=0.5 must be >= 1"),
        ({"aspect_sigma": -1.0}, r"data.aspect_sigma=-1.0 must be >= 0"),
        ({"num_classes": 2}, r"data=box_sets has one class \(box\); use data.num_classes=1"),
        ({"n_val": 0}, r"data.n_val must be a positive number of boxes"),
        ({"image_size": 4}, r"data.image_size=4"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        BoxSetsDataModule(**kwargs)
    assert "\n" not in str(error.value)
