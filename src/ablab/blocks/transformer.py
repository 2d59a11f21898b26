"""Pre-norm transformer encoder block (Vaswani et al. 2017; Dosovitskiy et al. 2021, ViT eq. 2–3).

x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x))) on (N, L, D) tokens, with
multi-head self-attention written out as softmax(QKᵀ/√d)V: fused kernels
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``'s fast path) are counted as zero
MACs by PyTorch's FLOP counter on CPU, so ``ablab.complexity`` would miss the attention matmuls.
One qkv ``Linear`` in the layout of torchvision's ``in_proj_weight`` and timm's ``qkv`` (q, k, v
stacked, heads contiguous), so weights load from either unchanged.

The registry's norms and activations act on (N, C, …) maps, while tokens are (N, L, D); this
module keeps a small token-norm table keyed by the same names — ``ln`` (LayerNorm over D for each
token, the transformer's norm), ``bn`` (BatchNorm over the batch and all tokens for each of the D
features, to test the claim that BN hurts a ViT) and ``none`` — and applies activations
channels-first, so per-channel ones (``prelu``, ``maxout``) see D as their channels.
"""

from __future__ import annotations

from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import make_act, make_shortcut
from ablab.registry import BLOCK, Registry

#: Normalisation layers for (N, L, D) tokens, keyed by the names of ``ablab.registry.NORM``.
TOKEN_NORM: Registry = Registry("token norm")


class ChannelsFirst(nn.Module):
    """y = f(xᵀ)ᵀ: a layer built for (N, C, L) maps applied to (N, L, C) tokens."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.transpose(1, 2)).transpose(1, 2)


@TOKEN_NORM.register("ln")
def token_layer_norm(dim: int) -> nn.Module:
    """LayerNorm over the D features of each token (ε = 1e-6 as torchvision and timm)."""
    return nn.LayerNorm(dim, eps=1e-6)


@TOKEN_NORM.register("bn")
def token_batch_norm(dim: int) -> nn.Module:
    """BatchNorm of each feature over the batch and all tokens, running stats at eval."""
    return ChannelsFirst(nn.BatchNorm1d(dim))


@TOKEN_NORM.register("none")
def no_token_norm(dim: int) -> nn.Module:
    """No normalisation."""
    return nn.Identity()


def make_token_norm(norm: str, dim: int) -> nn.Module:
    """Build the token normalisation named ``norm`` for ``dim`` features."""
    return TOKEN_NORM[norm](dim)


class SelfAttention(nn.Module):
    """y = proj(concat_h softmax(Q_h K_hᵀ / √d_h) V_h) with Q, K, V = split(qkv(x))."""

    def __init__(
        self, dim: int, num_heads: int, dropout: float = 0.0, attention_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"num_heads={num_heads} does not divide the width {dim}")
        self.num_heads, self.head_width = num_heads, dim // num_heads
        self.scale = self.head_width**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # (N, L, 3D) -> (N, L, 3, heads, d_h) -> (3, N, heads, L, d_h)
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_width))
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (N, heads, L, L)
        out = self.attention_dropout(weights) @ v  # (N, heads, L, d_h)
        out = out.transpose(1, 2).flatten(2)  # (N, L, heads · d_h) = (N, L, D)
        return self.dropout(self.proj(out))


@BLOCK.register("transformer")
class TransformerBlock(nn.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))); mlp = fc → act → fc."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "ln",
        act: str = "gelu",
        shortcut: str = "identity",
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if c_in != c_out or stride != 1:
            raise ConfigError(
                f"a transformer block keeps its width and token count: got c_in={c_in}, "
                f"c_out={c_out}, stride={stride}"
            )
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        if drop_path > 0 and self.shortcut is None:
            raise ConfigError(
                "drop_path needs a shortcut: a plain block would drop its whole output"
            )
        hidden = round(c_out * mlp_ratio)
        self.norm1 = make_token_norm(norm, c_out)
        self.attn = SelfAttention(c_out, num_heads, dropout, attention_dropout)
        self.norm2 = make_token_norm(norm, c_out)
        self.mlp = nn.Sequential(
            nn.Linear(c_out, hidden),
            ChannelsFirst(make_act(act, hidden)),
            nn.Dropout(dropout),
            nn.Linear(hidden, c_out),
            nn.Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # ViT/DeiT init (timm's default): PyTorch's Kaiming-uniform default is tuned for ReLU
        # convs; transformers train from truncated-normal σ = 0.02 weights and zero biases.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, L, D)
        out = self.drop_path(self.attn(self.norm1(x)))
        x = out if self.shortcut is None else x + out
        out = self.drop_path(self.mlp(self.norm2(x)))
        return out if self.shortcut is None else x + out
