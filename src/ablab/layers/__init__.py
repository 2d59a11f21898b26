"""Layers resolved by name: normalisation, activation, conv-norm-act."""

from ablab.layers.act import make_act
from ablab.layers.conv import ConvNormAct
from ablab.layers.norm import make_norm

__all__ = ["ConvNormAct", "make_act", "make_norm"]
