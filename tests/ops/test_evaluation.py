"""COCO AP through torchmetrics (pycocotools): the named results, worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ablab.ops import detection_map


def image(boxes, labels, scores=None) -> dict[str, torch.Tensor]:
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


def test_perfect_detections_score_one_everywhere() -> None:
    boxes = [[0, 0, 10, 10], [20, 20, 60, 60], [5, 5, 120, 120]]
    ap = detection_map([image(boxes, [0, 1, 2], [0.9, 0.8, 0.7])], [image(boxes, [0, 1, 2])],
                       class_names=["disc", "square", "thin"])  # fmt: skip
    assert ap["map"] == ap["map_50"] == ap["map_75"] == 1.0
    assert ap["ap/disc"] == ap["ap/square"] == ap["ap/thin"] == 1.0
    # one object of each COCO size: 100 px² small, 1,600 medium, 13,225 large
    assert ap["map_small"] == ap["map_medium"] == ap["map_large"] == 1.0


def test_a_worked_example_with_a_miss_and_a_class_without_ground_truth() -> None:
    """Class 0: IoU 100/120 = 0.83 matches at the thresholds 0.50 … 0.80 (7 of 10): AP 0.7, AP75 1.
    Class 1: its box is missed: AP 0. Class 2: a detection, no ground truth: undefined (NaN),
    left out of the mean: mAP = (0.7 + 0) / 2, AP75 = (1 + 0) / 2."""
    preds = [image([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 2], [0.9, 0.8])]
    targets = [image([[0, 0, 10, 12], [50, 50, 60, 60]], [0, 1])]
    ap = detection_map(preds, targets)
    assert ap["ap/0"] == pytest.approx(0.7)
    assert ap["ap/1"] == 0.0
    assert math.isnan(ap["ap/2"])  # COCO's −1
    assert ap["map"] == pytest.approx(0.35) and ap["map_75"] == pytest.approx(0.5)
    assert math.isnan(ap["map_medium"]) and math.isnan(ap["map_large"])  # no such objects


def test_an_image_with_no_detections_scores_its_objects_as_missed() -> None:
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    ap = detection_map([empty, image([[0, 0, 10, 10]], [0], [0.5])],
                       [image([[0, 0, 10, 10]], [0]), image([[0, 0, 10, 10]], [0])])  # fmt: skip
    # one of two objects found at every threshold, with nothing ranked above it: AP = 0.5
    assert ap["ap/0"] == pytest.approx(0.5, abs=0.01)
