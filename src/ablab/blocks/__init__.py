"""Network blocks sharing one signature, resolved by name from ``ablab.registry.BLOCK``:

``Block(c_in, c_out, stride=1, *, norm, act, shortcut, se_ratio, drop_path, ...)`` plus each
family's own shape arguments (``bottleneck_ratio``/``group_width`` for residual blocks,
``expansion``/``kernel_size`` for inverted residuals). Stems, the layers before the first block,
come from ``ablab.registry.STEM`` (``ablab.blocks.stem``).
"""

from ablab.blocks.dense import DenseBlock, DenseLayer, Transition
from ablab.blocks.fire import Fire
from ablab.blocks.inception import Inception, InceptionAux
from ablab.blocks.inverted import DepthwiseSeparable, InvertedResidual
from ablab.blocks.preact import PreActBasicBlock, PreActBottleneck
from ablab.blocks.repvgg import RepVGGBlock
from ablab.blocks.residual import BasicBlock, Bottleneck, ConvBlock
from ablab.blocks.shuffle import ShuffleV2Unit
from ablab.blocks.stem import cifar_stem, imagenet_stem
from ablab.blocks.transformer import TransformerBlock

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvBlock",
    "DenseBlock",
    "DenseLayer",
    "DepthwiseSeparable",
    "Fire",
    "Inception",
    "InceptionAux",
    "InvertedResidual",
    "PreActBasicBlock",
    "PreActBottleneck",
    "RepVGGBlock",
    "ShuffleV2Unit",
    "TransformerBlock",
    "Transition",
    "cifar_stem",
    "imagenet_stem",
]
