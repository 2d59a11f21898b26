"""Any timm model by name (Wightman, "PyTorch Image Models"), as an extra source of backbones.

Built without pretrained weights by default. Nothing is ever downloaded at run time: a request for
pretrained weights is served from a local weights file (``checkpoint_path``) or the Hugging Face
cache, and fails at once, before any network access, with a one-line error when neither has them.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
from huggingface_hub import try_to_load_from_cache
from torch import nn

from ablab.errors import ConfigError

#: Weight file names timm looks for in a Hugging Face hub repository, in its order of preference.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def cached_weights(name: str) -> str | None:
    """Path of ``name``'s default pretrained weights in the local Hugging Face cache, if there."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    for filename in _HUB_FILES:
        path = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def timm_model(
    name: str,
    in_channels: int = 3,
    num_classes: int = 1000,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, in_chans=in_channels, num_classes=num_classes, **kwargs)``."""
    if not timm.is_model(name):  # also accepts tagged names such as resnet18.a1_in1k
        known = timm.list_models()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(
            f"unknown timm model '{name}'{hint}; timm {timm.__version__} has {len(known)} models: "
            "python -c 'import timm; print(timm.list_models())'"
        )
    if pretrained and checkpoint_path is None:
        checkpoint_path = cached_weights(name)
        if checkpoint_path is None:
            raise ConfigError(
                f"pretrained weights for timm model '{name}' are not available offline (not in "
                "the Hugging Face cache, and nothing is downloaded at run time); set "
                "model.checkpoint_path=<weights file> or model.pretrained=false"
            )
    overlay = {"file": checkpoint_path} if pretrained else None
    try:
        return timm.create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay,
            in_chans=in_channels,
            num_classes=num_classes,
            **kwargs,
        )
    except TypeError as err:  # an argument the model does not take
        raise ConfigError(f"timm model '{name}': {err}") from None
