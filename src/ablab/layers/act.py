"""Activation functions by name.

ReLU: Nair & Hinton 2010; Leaky ReLU: Maas et al. 2013; PReLU: He et al. 2015;
SiLU/swish: Ramachandran et al. 2017; h-swish: Howard et al. 2019 (MobileNetV3); GELU: Hendrycks &
Gimpel 2016.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ablab.registry import ACT

ACT.register("sigmoid")(nn.Sigmoid)
ACT.register("tanh")(nn.Tanh)
ACT.register("relu")(nn.ReLU)
ACT.register("leaky_relu")(partial(nn.LeakyReLU, negative_slope=0.01))
ACT.register("prelu")(nn.PReLU)
ACT.register("relu6")(nn.ReLU6)
ACT.register("silu", "swish")(nn.SiLU)
ACT.register("hswish")(nn.Hardswish)
ACT.register("gelu")(nn.GELU)
ACT.register("identity")(nn.Identity)


def make_act(act: str) -> nn.Module:
    """Build the activation module named ``act``."""
    return ACT[act]()
