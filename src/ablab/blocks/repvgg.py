"""RepVGG blocks (Ding et al. 2021, "RepVGG: Making VGG-style ConvNets Great Again").

Training: y = act(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)), the identity-BN branch only where
shapes match. Deployment: every branch is linear, so BN folds into its conv
(W' = γ/σ · W, b' = β − γμ/σ), the 1x1 kernel is zero-padded to 3x3 and the identity becomes a 3x3
kernel with a 1 at the centre of its own channel; their sum is one 3x3 conv with a bias that
computes exactly the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import make_act
from ablab.registry import BLOCK


def _conv_norm(c_in: int, c_out: int, kernel_size: int, stride: int, norm: str) -> nn.Sequential:
    if norm not in ("bn", "none"):
        raise ConfigError(f"RepVGG blocks fuse only norm 'bn' or 'none', got '{norm}'")
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=norm == "none"),
        nn.BatchNorm2d(c_out) if norm == "bn" else nn.Identity(),
    )


def fuse(kernel: Tensor, bias: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm (or nothing) into the conv that precedes it."""
    bias = torch.zeros(kernel.shape[0], device=kernel.device) if bias is None else bias
    if isinstance(norm, nn.Identity):
        return kernel, bias
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return kernel * scale.view(-1, 1, 1, 1), norm.bias + (bias - norm.running_mean) * scale


@BLOCK.register("repvgg")
class RepVGGBlock(nn.Module):
    """y = act(dense3x3(x) + dense1x1(x) + norm(x)) in training; act(conv3x3'(x)) once fused."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "identity",
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if se_ratio or drop_path:
            raise ConfigError("RepVGG blocks take no se_ratio or drop_path (they would not fuse)")
        if shortcut not in ("identity", "none"):
            raise ConfigError(f"RepVGG shortcut must be 'identity' or 'none', got '{shortcut}'")
        self.dense = _conv_norm(c_in, c_out, 3, stride, norm)
        self.pointwise = _conv_norm(c_in, c_out, 1, stride, norm)
        same = c_in == c_out and stride == 1 and shortcut == "identity"
        self.identity = (nn.BatchNorm2d(c_in) if norm == "bn" else nn.Identity()) if same else None
        self.act = make_act(act, c_out)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        out = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one 3x3 conv computing the same eval-mode function."""
        if self.fused is not None:
            return
        conv3, norm3 = self.dense
        kernel, bias = fuse(conv3.weight, conv3.bias, norm3)
        conv1, norm1 = self.pointwise
        k1, b1 = fuse(F.pad(conv1.weight, (1, 1, 1, 1)), conv1.bias, norm1)
        kernel, bias = kernel + k1, bias + b1
        if self.identity is not None:
            c = kernel.shape[0]
            eye = torch.zeros_like(kernel)
            eye[torch.arange(c), torch.arange(c), 1, 1] = 1.0
            k_id, b_id = fuse(eye, None, self.identity)
            kernel, bias = kernel + k_id, bias + b_id
        self.fused = nn.Conv2d(
            conv3.in_channels, conv3.out_channels, 3, conv3.stride, 1, bias=True
        ).to(kernel.device, kernel.dtype)
        self.fused.weight.copy_(kernel)
        self.fused.bias.copy_(bias)
        del self.dense, self.pointwise, self.identity
        self.identity = None
