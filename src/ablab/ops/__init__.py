"""Detection pieces owned here rather than taken from torchvision.ops (and tested against it):
box IoU / GIoU, greedy and class-aware NMS, k-means anchors, sigmoid focal loss."""

from ablab.ops.anchors import KMeansAnchors, kmeans_anchors
from ablab.ops.boxes import batched_nms, box_area, box_iou, generalized_box_iou, nms
from ablab.ops.focal import sigmoid_focal_loss

__all__ = [
    "KMeansAnchors",
    "batched_nms",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "kmeans_anchors",
    "nms",
    "sigmoid_focal_loss",
]
