"""Layers resolved by name: normalisation, activation, conv-norm-act, shortcuts; the feature
pyramid."""

from ablab.layers.act import make_act
from ablab.layers.conv import ConvNormAct
from ablab.layers.fpn import FeaturePyramid
from ablab.layers.norm import make_norm
from ablab.layers.shortcut import make_shortcut

__all__ = ["ConvNormAct", "FeaturePyramid", "make_act", "make_norm", "make_shortcut"]
