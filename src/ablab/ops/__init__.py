"""Detection pieces owned here rather than taken from torchvision.ops (and tested against it):
box IoU / GIoU, greedy and class-aware NMS, k-means anchors, sigmoid focal loss; and COCO's AP,
named, from torchmetrics (which computes it)."""

from ablab.ops.anchors import KMeansAnchors, kmeans_anchors
from ablab.ops.boxes import (
    batched_nms,
    box_area,
    box_iou,
    generalized_box_iou,
    nms,
    paired_generalized_box_iou,
)
from ablab.ops.evaluation import detection_map, mean_average_precision, named_average_precision
from ablab.ops.focal import sigmoid_focal_loss

__all__ = [
    "KMeansAnchors",
    "batched_nms",
    "box_area",
    "box_iou",
    "detection_map",
    "generalized_box_iou",
    "kmeans_anchors",
    "mean_average_precision",
    "named_average_precision",
    "nms",
    "paired_generalized_box_iou",
    "sigmoid_focal_loss",
]
