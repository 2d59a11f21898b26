"""A dense, anchor-free one-stage detector: FCOS (Tian et al. 2019, "FCOS: Fully Convolutional
One-Stage Object Detection") on a zoo backbone, with or without a feature pyramid.

Every location (x, y) of every level predicts, for each of the C classes, an independent logit
(a sigmoid classifier, as RetinaNet's, Lin et al. 2017b §4), the distances (l, t, r, b) from the
location to the four sides of its box, and a centerness logit. FCOS rather than RetinaNet: one
prediction per location instead of A anchors, so target assignment is a containment test and a
scale range per level, and the box loss is an IoU loss on boxes (``ablab.ops``' GIoU) with no
anchor encoding to choose.

- Features: ``Backbone(net)`` (:mod:`ablab.models.levels`) gives the levels C_l of a zoo
  classifier (its head is dropped). ``fpn=true``: a :class:`~ablab.layers.fpn.FeaturePyramid`
  (Lin et al. 2017) of ``fpn_channels`` over every level, plus ``extra_levels`` strided levels
  (P6, P7 from P_L, FCOS's choice). ``fpn=false``: the backbone's deepest level alone, brought to
  ``fpn_channels`` by a 1x1 conv, so the head is the same and only the pyramid differs (the
  single-level detector of FCOS §4.1.1, which uses P4 alone — with a 3-stage ResNet at 64 px the
  deepest level *is* at stride 16).
- Head (FCOS §3.1, Fig. 2), shared by every level: a classification tower and a regression tower
  of ``head_convs`` 3x3 conv-GN-ReLU layers each (four of 256 channels in the paper); a 3x3 conv
  gives C class logits from the first tower, a 3x3 conv the 4 distances and another the
  centerness from the second (centerness on the regression branch, as in the FCOS authors' later
  code: it scored higher than on the classification branch of the paper).
- Distances: d = s_l · exp(σ_l · raw) in input pixels, with s_l the level's stride and σ_l a
  learnt scalar per level (FCOS's exp(s_i x), normalised by the stride as in its later code, so
  one head serves every level).
- The classification bias starts at b = −log((1 − π) / π), π = ``prior_prob`` (Lin et al. 2017b
  §3.3), so that at the start every location scores π and the many background locations do not
  swamp the first steps; it is set in :meth:`DenseDetector.special_init`, after any init scheme.

The output is one tensor (N, A, C + 5) over the A = Σ_l H_l W_l locations of every level, finest
level first, row-major within a level: C class logits, (l, t, r, b), one centerness logit.
:meth:`DenseDetector.locations` gives each row's (x, y) and stride, so the task that assigns
targets and decodes boxes needs nothing else from the net. Input sides must be multiples of the
largest stride (then a level of stride s is exactly H/s x W/s).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers.conv import ConvNormAct
from ablab.layers.fpn import FeaturePyramid
from ablab.models.levels import Backbone, FeatureLevels

#: Columns of the output after the class logits: l, t, r, b and the centerness logit.
BOX_COLUMNS = 4
#: Upper bound on σ_l · raw before the exponential: an early step cannot overflow a distance.
MAX_LOG_DISTANCE = 10.0


class DenseDetector(nn.Module):
    """out = concat_l head(P_l): per location C class logits, (l, t, r, b) = s_l·exp(σ_l·raw) and
    a centerness logit; P_l = FPN(backbone levels) or a 1x1 conv of the deepest level."""

    def __init__(
        self,
        backbone: FeatureLevels,
        num_classes: int,
        *,
        fpn: bool = True,
        fpn_channels: int = 64,
        extra_levels: int = 0,
        head_convs: int = 2,
        norm: str = "gn",
        prior_prob: float = 0.01,
    ) -> None:
        """``backbone``: a zoo classifier with feature levels (its head is not used);
        ``norm``: the pyramid's and the towers' norm (GN in FCOS)."""
        super().__init__()
        if not isinstance(backbone, FeatureLevels):
            raise ConfigError(
                f"model.backbone {type(backbone).__name__} has no feature levels; use a zoo "
                "classifier with stem and stages (model/backbone=resnet18, ...)"
            )
        if num_classes < 1:
            raise ConfigError(f"model.num_classes={num_classes}: a detector needs at least 1")
        if head_convs < 0 or fpn_channels < 1:
            raise ConfigError(
                f"model.head_convs={head_convs} must be >= 0 and model.fpn_channels="
                f"{fpn_channels} >= 1"
            )
        if not 0 < prior_prob < 1:
            raise ConfigError(f"model.prior_prob={prior_prob} must be in (0, 1)")
        if extra_levels and not fpn:
            raise ConfigError(
                f"model.extra_levels={extra_levels} extends a pyramid: with model.fpn=false "
                "use model.extra_levels=0"
            )
        self.num_classes, self.prior_prob, self.fpn = num_classes, prior_prob, fpn
        self.backbone = Backbone(backbone)
        channels, strides = self.backbone.level_channels, self.backbone.level_strides
        if fpn:
            self.neck: nn.Module = FeaturePyramid(
                channels, fpn_channels, extra_levels=extra_levels, extra_from="pyramid", norm=norm
            )
            self.strides = self.neck.output_strides(strides)
        else:
            self.neck = ConvNormAct(channels[-1], fpn_channels, 1, norm=norm, act="identity")
            self.strides = strides[-1:]

        def tower() -> nn.Sequential:
            return nn.Sequential(
                *(ConvNormAct(fpn_channels, fpn_channels, 3, norm=norm) for _ in range(head_convs))
            )

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(fpn_channels, num_classes, 3, padding=1)
        self.box_distances = nn.Conv2d(fpn_channels, BOX_COLUMNS, 3, padding=1)
        self.centerness = nn.Conv2d(fpn_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        self.special_init()

    def special_init(self) -> None:
        """The prior bias of the class logits, b = −log((1 − π)/π) (Lin et al. 2017b §3.3), and
        the head's last convs drawn from N(0, 0.01²) with zero biases otherwise (FCOS §3.1)."""
        for conv in (self.cls_logits, self.box_distances, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - self.prior_prob) / self.prior_prob))
        with torch.no_grad():
            self.scales.fill_(1.0)

    def features(self, x: Tensor) -> list[Tensor]:
        """[P_l], finest first: the pyramid's maps, or the projected deepest backbone level."""
        levels = self.backbone(x)
        return self.neck(levels) if self.fpn else [self.neck(levels[-1])]

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        stride = max(self.strides)
        if height % stride or width % stride:
            raise ConfigError(
                f"model=DenseDetector needs input sides divisible by its largest stride {stride}; "
                f"got {height}x{width}: use data.image_size={stride * max(1, height // stride)} "
                f"or {stride * (height // stride + 1)}"
            )
        outputs = []
        for level, feature in enumerate(self.features(x)):
            cls_feature, reg_feature = self.cls_tower(feature), self.reg_tower(feature)
            log_distance = (self.scales[level] * self.box_distances(reg_feature)).clamp(
                max=MAX_LOG_DISTANCE
            )
            distances = self.strides[level] * log_distance.exp()
            out = torch.cat(
                [self.cls_logits(cls_feature), distances, self.centerness(reg_feature)], dim=1
            )  # (N, C + 5, H_l, W_l)
            outputs.append(out.flatten(2))  # (N, C + 5, H_l W_l)
        return torch.cat(outputs, dim=2).transpose(1, 2)  # (N, A, C + 5)

    def locations(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(x, y) in input pixels of every output row, (A, 2), and its level's stride, (A,).

        A location (i, j) of a level of stride s maps to (⌊s/2⌋ + j s, ⌊s/2⌋ + i s), near the
        centre of its receptive field (FCOS §3.1)."""
        points, strides = [], []
        for s in self.strides:
            ys = torch.arange(height // s, dtype=torch.float32) * s + s // 2
            xs = torch.arange(width // s, dtype=torch.float32) * s + s // 2
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
            strides.append(torch.full((len(points[-1]),), float(s)))
        return torch.cat(points), torch.cat(strides)
