"""Procedural detection shapes: deterministic per (seed, split, index), valid tight boxes of the
sizes asked for, the rare class as rare as asked, padded batches standardised on transfer."""

from __future__ import annotations

import pytest
import torch

from ablab.data.shapes_det import CLASS_NAMES, PAD, ShapesDetDataModule, pad, unpad


def data(**kw) -> ShapesDetDataModule:
    args = {"n_train": 40, "n_val": 8, "n_test": 8, **kw}
    dm = ShapesDetDataModule(**args)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def shapes() -> ShapesDetDataModule:
    return data(n_train=200)


def test_images_are_the_same_for_a_seed_and_index_whatever_the_split_sizes(shapes) -> None:
    again = data(n_train=20, n_val=4)  # fewer images: the first ones are the same
    for split, n in (("train", 20), ("val", 4)):
        for mine, theirs in zip(shapes.splits[split].tensors, again.splits[split].tensors,
                                strict=True):  # fmt: skip
            assert torch.equal(mine[:n], theirs)
    other = data(n_train=20, n_val=4, seed=1)
    assert not torch.equal(other.splits["train"].tensors[0], again.splits["train"].tensors[0])
    # splits never share an image
    assert not torch.equal(shapes.splits["val"].tensors[0][0], shapes.splits["test"].tensors[0][0])


def test_boxes_are_tight_valid_and_of_the_sizes_asked_for(shapes) -> None:
    images, boxes, labels = shapes.splits["train"].tensors
    assert images.shape == (200, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert boxes.shape == (200, 6, 4) and labels.shape == (200, 6)
    real = labels != PAD
    assert real.any(dim=1).all()  # every image has an object
    assert (boxes[~real] == 0).all()  # padding rows are empty
    b = boxes[real]
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all()
    sides = b[:, 2:] - b[:, :2]
    assert (sides >= 1).all() and sides.max() <= 0.625 * 64 + 1  # at most 40 px (and a pixel)
    # log-uniform diameters from 4 to 40 px: many small objects, some over 32 px
    assert (sides.amax(dim=1) <= 8).float().mean() > 0.15
    assert (sides.amax(dim=1) > 24).any()
    # whole pixels: a box runs from its first column / row with shape pixels to its last + 1
    assert torch.equal(b, b.round())
    assert set(labels[real].unique().tolist()) == set(range(len(CLASS_NAMES)))


def test_boxes_overlap_little(shapes) -> None:
    from ablab.ops import box_iou

    _, boxes, labels = shapes.splits["train"].tensors
    for b, y in zip(boxes, labels, strict=True):
        b = b[y != PAD]
        iou = box_iou(b, b).fill_diagonal_(0)
        assert iou.max() <= 0.3 + 0.25  # placed at geometric IoU ≤ 0.3, boxes are the pixels'


def test_the_rare_class_is_as_rare_as_asked() -> None:
    dm = data(n_train=400, rare_class="triangle", rare_ratio=0.1)
    counts = torch.tensor(dm.train_class_counts, dtype=torch.float32)
    rare = CLASS_NAMES.index("triangle")
    others = torch.cat([counts[:rare], counts[rare + 1 :]]).mean()
    assert 0.05 < counts[rare] / others < 0.17  # about 0.1 (~45 of ~1400 boxes)
    assert dm.run_params() == {"data.train_class_counts": counts.long().tolist()}


def test_batches_are_padded_tensors_standardised_on_transfer(shapes) -> None:
    x, boxes, labels = next(iter(shapes.train_dataloader()))
    assert x.shape == (64, 3, 64, 64) and boxes.shape == (64, 6, 4) and labels.shape == (64, 6)
    nx, nb, nl = shapes.on_after_batch_transfer((x, boxes, labels), 0)
    assert torch.equal(nb, boxes) and torch.equal(nl, labels)
    assert torch.allclose((nx * shapes.std.view(1, 3, 1, 1)) + shapes.mean.view(1, 3, 1, 1), x,
                          atol=1e-5)  # fmt: skip
    assert shapes.example_input().shape == (2, 3, 64, 64)
    # per-image lists and back
    targets = unpad(boxes, labels)
    again = pad([(t["boxes"], t["labels"]) for t in targets], 6)
    assert torch.equal(again[0], boxes) and torch.equal(again[1], labels)
    # a fixed subset of the clean training set keeps the three tensors together
    limited = data(train_eval=True, train_eval_limit=5).val_dataloader()["train_eval"]
    x, boxes, labels = next(iter(limited))
    assert len(x) == len(boxes) == len(labels) == 5
