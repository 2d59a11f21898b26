"""Pre-activation residual blocks (He et al. 2016, "Identity Mappings in Deep Residual Networks").

norm → act → conv ordering: the shortcut path is a clean identity from block to block, and the
block output is not passed through an activation. The network adds one final norm + act before
pooling (``final_norm: true`` in the model config).
"""

from __future__ import annotations

from torch import Tensor, nn

from ablab.blocks.residual import branch_extras, inner_width
from ablab.layers import make_act, make_norm, make_shortcut
from ablab.layers.conv import num_groups
from ablab.layers.norm import uses_norm
from ablab.registry import BLOCK


def norm_act_conv(
    c_in: int, c_out: int, kernel_size: int, stride: int, norm: str, act: str, group_width=None
) -> nn.Sequential:
    groups = num_groups(c_in, group_width, c_out)
    return nn.Sequential(
        make_norm(norm, c_in),
        make_act(act, c_in),
        nn.Conv2d(
            c_in,
            c_out,
            kernel_size,
            stride,
            kernel_size // 2,
            groups=groups,
            bias=not uses_norm(norm),
        ),
    )


class _PreActivation(nn.Module):
    """y = drop_path(se(F(x))) + shortcut(x); the first norm-act is shared with a projection."""

    residual: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        first = self.residual[0]
        pre = first[1](first[0](x))  # norm → act of the first unit
        out = first[2](pre)
        for unit in self.residual[1:]:
            out = unit(out)
        out = self.drop_path(self.se(out))
        if self.shortcut is None:
            return out
        # A projection sees the pre-activated input, an identity sees x itself (He et al. 2016b).
        return out + self.shortcut(pre if self.projects else x)

    def _add_shortcut(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        norm: str,
        shortcut: str,
        se_ratio: float,
        drop_path: float,
    ) -> None:
        self.se, self.drop_path = branch_extras(c_out, shortcut, se_ratio, drop_path)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        self.projects = self.shortcut is not None and not (c_in == c_out and stride == 1)

    def zero_init_last(self) -> None:
        """Zero the last conv, so the block starts as its shortcut; nothing without a shortcut."""
        if self.shortcut is not None:
            nn.init.zeros_(self.residual[-1][-1].weight)


@BLOCK.register("preact_basic")
class PreActBasicBlock(_PreActivation):
    """F(x) = conv3x3(act(norm(conv3x3(act(norm(x))))))."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "projection",
        bottleneck_ratio: float = 1.0,
        group_width: int | None = None,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = inner_width(c_out, bottleneck_ratio, group_width)
        self.residual = nn.Sequential(
            norm_act_conv(c_in, width, 3, stride, norm, act, group_width),
            norm_act_conv(width, c_out, 3, 1, norm, act, group_width),
        )
        self._add_shortcut(c_in, c_out, stride, norm, shortcut, se_ratio, drop_path)


@BLOCK.register("preact_bottleneck")
class PreActBottleneck(_PreActivation):
    """F(x) = conv1x1(act(norm(conv3x3(act(norm(conv1x1(act(norm(x))))))))."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "projection",
        bottleneck_ratio: float = 0.25,
        group_width: int | None = None,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = inner_width(c_out, bottleneck_ratio, group_width)
        self.residual = nn.Sequential(
            norm_act_conv(c_in, width, 1, 1, norm, act),
            norm_act_conv(width, width, 3, stride, norm, act, group_width),
            norm_act_conv(width, c_out, 1, 1, norm, act),
        )
        self._add_shortcut(c_in, c_out, stride, norm, shortcut, se_ratio, drop_path)
