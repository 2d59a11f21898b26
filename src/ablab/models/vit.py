"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), DeiT sizes
(Touvron et al. 2021) as configs.

The image is cut into p x p patches, each linearly embedded to ``width`` features; a learned class
token is prepended and a learned position embedding added; ``depth`` pre-norm transformer blocks
follow, and the head classifies the class token after a final norm. ViT-B/16 has exactly
torchvision's ``vit_b_16`` parameters (86,567,656), DeiT-Ti/S exactly timm's
``vit_tiny/small_patch16_224``.

Any input size runs: the input is zero-padded on the right and bottom to whole patches (timm's
``dynamic_img_pad``), and the position table, learned for ``image_size``, is resampled bicubically
to the actual patch grid when it differs (timm's ``dynamic_img_size``); the resampling is a leaf in
``torch.fx`` traces, so the model stays traceable. The ImageNet forms keep a 224 px table (a 28 px
digit is a 2x2 grid of 16 px patches); the small forms take ``image_size`` from the data and use
4 px patches (7x7 tokens at 28 px, 8x8 at 32 px). Minimum input: 1 px.

Notes' slips recorded here: the notes say ViT "contains no CNN", but the linear patch embedding
is exactly a conv with kernel = stride = patch size (as implemented here and in torchvision); the
notes' "positional encoding" is a learned embedding in ViT, not Vaswani et al.'s sinusoids; and
DropPath is not in the ViT paper — it comes with DeiT's training recipe (off by default here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from ablab.blocks.transformer import TransformerBlock, make_token_norm

# The resampling branches on the input's size: record it as one call in fx graphs.
torch.fx.wrap("resample_abs_pos_embed")


class PatchEmbedding(nn.Module):
    """tokens = [class; conv_p/p(pad(x)) flattened] + position embedding, then dropout."""

    def __init__(
        self, c_in: int, width: int, patch_size: int, image_size: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        side = -(-image_size // patch_size)  # patches per side after padding
        self.grid = (side, side)
        self.conv = nn.Conv2d(c_in, width, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + side * side, width))
        trunc_normal_(self.position_embedding, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))  # no pixel is dropped
        x = self.conv(x)  # (N, D, H/p, W/p)
        position = resample_abs_pos_embed(
            self.position_embedding, new_size=(x.shape[-2], x.shape[-1]), old_size=self.grid
        )  # (1, 1 + L, D)
        x = x.flatten(2).transpose(1, 2)  # (N, L, D), L = (H/p)(W/p)
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (N, 1, D)
        return self.dropout(torch.cat((cls, x), dim=1) + position)  # (N, 1 + L, D)


class ClassTokenPool(nn.Module):
    """x[:, 0]: the class token's features stand for the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class ViT(nn.Module):
    """logits = head(stages(stem(x))): patch tokens → ``depth`` transformer blocks → class token."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm: str = "ln",
        act: str = "gelu",
        shortcut: str = "identity",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = PatchEmbedding(in_channels, width, patch_size, image_size, dropout)
        # One block per stage: the net is isotropic, every block sees (N, 1 + L, width).
        self.stages = nn.Sequential(
            *(
                TransformerBlock(
                    width,
                    width,
                    norm=norm,
                    act=act,
                    shortcut=shortcut,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    dropout=dropout,
                    attention_dropout=attention_dropout,
                    # Stochastic depth: the drop rate grows linearly with block index.
                    drop_path=drop_path_rate * i / max(1, depth - 1),
                )
                for i in range(depth)
            )
        )
        self.head = nn.Sequential(
            make_token_norm(norm, width), ClassTokenPool(), nn.Linear(width, num_classes)
        )
        trunc_normal_(self.head[-1].weight, std=0.02)
        nn.init.zeros_(self.head[-1].bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
