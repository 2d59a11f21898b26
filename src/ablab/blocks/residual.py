"""Post-activation residual blocks (He et al. 2016, "Deep Residual Learning for Image Recognition").

With ``shortcut="none"`` the same layers form a plain block (the paper's plain baselines); with
``group_width`` the bottleneck's 3x3 is grouped (ResNeXt, Xie et al. 2017); ``se_ratio`` > 0 adds
squeeze-and-excitation on the residual branch (Hu et al. 2018); ``drop_path`` drops the residual
branch per sample (stochastic depth, Huang et al. 2016).
"""

from __future__ import annotations

from timm.layers import DropPath, SEModule
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_act, make_shortcut
from ablab.registry import BLOCK


def inner_width(c_out: int, bottleneck_ratio: float, group_width: int | None) -> int:
    """Width of the block's inner convs, rounded to a whole number of groups."""
    width = max(1, round(c_out * bottleneck_ratio))
    if group_width:
        width = max(group_width, round(width / group_width) * group_width)
    return width


def branch_extras(
    c_out: int, shortcut: str, se_ratio: float, drop_path: float
) -> tuple[nn.Module, nn.Module]:
    """The SE gate and drop-path applied to a residual branch (identities when off)."""
    if drop_path > 0 and shortcut == "none":
        raise ConfigError("drop_path needs a shortcut: a plain block would drop its whole output")
    se = SEModule(c_out, rd_ratio=se_ratio, rd_divisor=1) if se_ratio > 0 else nn.Identity()
    return se, DropPath(drop_path) if drop_path > 0 else nn.Identity()


class _PostActivation(nn.Module):
    """y = act(drop_path(se(F(x))) + shortcut(x)), or act(F(x)) when there is no shortcut."""

    residual: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.se(self.residual(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)

    def zero_init_last(self) -> None:
        """γ = 0 in the last norm, so the block starts as its shortcut (Goyal et al. 2017).

        Does nothing without a shortcut: in a plain net it would zero every block's output.
        """
        norm = self.residual[-1].norm
        if self.shortcut is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)


@BLOCK.register("conv")
class ConvBlock(_PostActivation):
    """F(x) = norm(conv_kxk(x)): one k x k conv per block (a VGG layer with ``shortcut="none"``).

    Against ``basic``: two stacked 3x3 convs see the same 5x5 window as one 5x5 conv with
    2·9/25 = 0.72 of its weights and one more non-linearity (Simonyan & Zisserman 2015, §2.3).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "none",
        kernel_size: int = 3,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            ConvNormAct(c_in, c_out, kernel_size, stride, norm=norm, act="identity")
        )
        self.se, self.drop_path = branch_extras(c_out, shortcut, se_ratio, drop_path)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        self.act = make_act(act, c_out)


@BLOCK.register("basic")
class BasicBlock(_PostActivation):
    """F(x) = norm(conv3x3(act(norm(conv3x3(x))))): ResNet-18/34 and the CIFAR ResNets."""

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
            ConvNormAct(c_in, width, 3, stride, norm=norm, act=act, group_width=group_width),
            ConvNormAct(width, c_out, 3, norm=norm, act="identity", group_width=group_width),
        )
        self.se, self.drop_path = branch_extras(c_out, shortcut, se_ratio, drop_path)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        self.act = make_act(act, c_out)


@BLOCK.register("bottleneck")
class Bottleneck(_PostActivation):
    """F(x) = 1x1 expand ∘ 3x3 (strided, optionally grouped) ∘ 1x1 reduce: ResNet-50/101/152."""

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
            ConvNormAct(c_in, width, 1, norm=norm, act=act),
            # Stride on the 3x3 (ResNet v1.5, as torchvision), not on the first 1x1.
            ConvNormAct(width, width, 3, stride, norm=norm, act=act, group_width=group_width),
            ConvNormAct(width, c_out, 1, norm=norm, act="identity"),
        )
        self.se, self.drop_path = branch_extras(c_out, shortcut, se_ratio, drop_path)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        self.act = make_act(act, c_out)
