"""Network blocks sharing one signature, resolved by name from ``ablab.registry.BLOCK``:

``Block(c_in, c_out, stride=1, *, norm, act, shortcut, bottleneck_ratio, group_width, se_ratio,
drop_path)``.
"""

from ablab.blocks.preact import PreActBasicBlock, PreActBottleneck
from ablab.blocks.residual import BasicBlock, Bottleneck

__all__ = ["BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck"]
