"""Detection quality as COCO measures it: AP over IoU thresholds 0.50:0.05:0.95 (mAP), AP at IoU
0.50 and 0.75, AP by object size (small < 32² pixels ≤ medium < 96² ≤ large) and AP per class
(Lin et al. 2014, "Microsoft COCO"; Everingham et al. 2010 for AP50, PASCAL VOC's).

The computation is torchmetrics' ``MeanAveragePrecision`` on pycocotools' COCOeval, the reference
implementation, not a copy: this module only names its results. COCO writes −1 where a value is
undefined (a class with no ground-truth box, no object of a size); here that is NaN, so no mean
or comparison reads it as a score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

#: The summary values kept from torchmetrics' result, under their torchmetrics names.
SUMMARY = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def mean_average_precision() -> MeanAveragePrecision:
    """The metric to update batch by batch: boxes (x1, y1, x2, y2) in pixels, AP per class on."""
    return MeanAveragePrecision(iou_type="bbox", box_format="xyxy", class_metrics=True)


def named_average_precision(
    result: Mapping[str, Tensor], class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Flat floats from ``MeanAveragePrecision.compute()``: the :data:`SUMMARY` values and
    ``ap/<class>`` (the class's name when ``class_names`` gives it, else its id); COCO's −1
    (undefined) becomes NaN."""

    def value(x: Tensor | float) -> float:
        x = float(x)
        return math.nan if x == -1 else x

    named = {key: value(result[key]) for key in SUMMARY}
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    for label, ap in zip(classes, per_class, strict=True):
        name = class_names[label] if class_names is not None and label < len(class_names) else label
        named[f"ap/{name}"] = value(ap)
    return named


def detection_map(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """COCO AP of ``preds`` (per image: ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,))
    against ``targets`` (per image: ``boxes`` (M, 4), ``labels`` (M,)), named as in
    :func:`named_average_precision`."""
    metric = mean_average_precision()
    metric.update([dict(p) for p in preds], [dict(t) for t in targets])
    return named_average_precision(metric.compute(), class_names)
