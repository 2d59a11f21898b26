"""Batched, per-sample random augmentation on the training device, with its own seed stream.

Image ops are ``kornia.augmentation`` modules (Riba et al. 2020, "Kornia: an open source
differentiable computer vision library for PyTorch"): each draws its parameters per sample for the
whole (N, C, H, W) batch at once, on the device the batch is on. Label mixing is timm's ``Mixup``,
which implements mixup (Zhang et al. 2018, "mixup: Beyond empirical risk minimization": x = λ·x_i +
(1−λ)·x_j, λ ~ Beta(α, α)) and CutMix (Yun et al. 2019: a box of x_j pasted into x_i, λ = the kept
area) with a per-batch switch between them; it turns class indices into soft (N, num_classes)
targets, which ``nn.CrossEntropyLoss`` accepts as class probabilities.

Every batch's randomness is drawn inside a forked RNG seeded by (seed, rank, batch counter), so two
runs with the same ``seeds.augmentation`` see the same augmented batches whatever else (weight
init, dropout, a different model) consumes the global generators, and augmentation being on or off
leaves those generators untouched. The counter is a buffer, so a resumed run continues the sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ablab.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    from timm.data import Mixup

# kornia and timm are imported where an op or a mix is used (about 0.7 s of start-up otherwise,
# for the many runs that augment nothing).

#: An op as a module, as its ``_target_`` config (built and validated here), or ``None`` (dropped).
OpSpec = nn.Module | Mapping[str, Any] | None

# Argument names checked in every op's config, whatever the op: kornia accepts p=1.5 and negative
# padding without a word, and timm's Mixup takes negative alphas.
PROBABILITIES = frozenset({"p", "p_batch", "prob", "switch_prob"})
NON_NEGATIVE = frozenset({"padding", "mixup_alpha", "cutmix_alpha", "std", "sigma"})
# (low, high) pairs; RandomAffine's scale may give two, (x_low, x_high, y_low, y_high)
RANGES = frozenset({"scale", "ratio", "cutmix_minmax", "lambda_val"})
MIX_MODES = ("batch", "pair", "elem")


class BatchAugment(nn.Module):
    """(x, y) -> mix(op_k(… op_1(x)), y): named image ops in order, then optional label mixing."""

    def __init__(
        self,
        ops: Mapping[str, OpSpec] | None = None,
        mix: Mixup | Mapping[str, Any] | None = None,
        seed: int = 0,
        in_channels: int | None = None,
        image_size: int | None = None,
    ) -> None:
        """``ops`` map a name to an image op; ``mix`` is a ``timm.data.Mixup`` (or its config).

        With ``in_channels`` and ``image_size`` every op is tried once on a dummy batch, so an op
        that cannot take the data (hue on gray images, a crop of the wrong size) fails here.
        """
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seeds.augmentation must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.ops = nn.ModuleDict()
        self.op_text: dict[str, str] = {}
        for name, spec in (ops or {}).items():
            if spec is not None:  # a null entry drops the op: augmentation.ops.hflip=null
                self.ops[name], self.op_text[name] = build_op(f"augmentation.ops.{name}", spec)
        self.mix, self.mix_text = build_mix(mix) if mix is not None else (None, "")
        self.register_buffer("batches_drawn", torch.zeros((), dtype=torch.long))
        if in_channels is not None and image_size is not None:
            self.check_runs(in_channels, image_size)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Augment the next training batch, then advance the batch counter."""
        out = self.draw(x, y, int(self.batches_drawn))
        # Out of place: a state dict taken earlier (a checkpoint being written) keeps its count.
        self.batches_drawn = self.batches_drawn + 1
        return out

    def draw(self, x: Tensor, y: Tensor, index: int) -> tuple[Tensor, Tensor]:
        """Batch number ``index`` augmented: a function of (seed, rank, index, x, y) alone."""
        if not self.ops and self.mix is None:
            return x, y
        with seeded(batch_seed(self.seed, index), x.device, numpy=self.mix is not None):
            for op in self.ops.values():
                x = op(x)
            if self.mix is not None:
                x, y = self.mix_batch(x, y)
        return x, y

    def mix_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """timm's Mixup on a copy; class indices become (N, num_classes) probabilities."""
        x = x.clone()  # timm mixes in place; the caller's batch stays as it was
        # timm pairs sample i with sample N-1-i and asserts an even batch: an odd (last) batch
        # mixes its first N-1 samples and keeps the final one with its own (smoothed) target.
        even = len(x) - len(x) % 2
        targets = []
        if even:
            _, mixed = self.mix(x[:even], y[:even])  # writes into x[:even], a view of x
            targets.append(mixed)
        if even < len(x):
            smoothing = self.mix.label_smoothing
            from timm.data.mixup import mixup_target

            targets.append(mixup_target(y[even:], self.mix.num_classes, 1.0, smoothing))
        return x, torch.cat(targets)

    def check_runs(self, in_channels: int, image_size: int) -> None:
        """Run every op once on a dummy batch with every random gate open (ConfigError if not)."""
        shape = (4, in_channels, image_size, image_size)
        data = f"{in_channels}-channel {image_size} px images"
        with seeded(0, torch.device("cpu")):  # leaves the global generators as they were
            x = torch.rand(shape)
            for name, op in self.ops.items():
                where = f"augmentation.ops.{name} ({self.op_text[name]})"
                try:
                    out = probe(op, x)
                except Exception as err:
                    raise ConfigError(f"{where} fails on {data}: {reason(err)}") from err
                if out.shape != x.shape:
                    raise ConfigError(
                        f"{where} turns {data} into {tuple(out.shape[1:])}; validation batches are "
                        f"not augmented, so training ops must keep the data's channels and size"
                    )
                x = out
            if self.mix is not None:
                labels = torch.arange(len(x)) % self.mix.num_classes
                try:
                    self.mix_batch(x, labels)
                except Exception as err:
                    raise ConfigError(f"augmentation.mix ({self.mix_text}): {reason(err)}") from err

    def describe(self) -> list[str]:
        """One line per op in order, ``name: Class(arg=value, …)``, then the mixing and seed."""
        lines = [f"{name}: {text}" for name, text in self.op_text.items()]
        if self.mix is not None:
            lines.append(f"mix: {self.mix_text}")
        return [*lines, f"seed: {self.seed}"]

    def extra_repr(self) -> str:
        return f"seed={self.seed}, mix={self.mix_text or None}"


def build_op(where: str, spec: OpSpec) -> tuple[nn.Module, str]:
    """An image op and its one-line description, from a module or a validated ``_target_`` config."""
    if isinstance(spec, nn.Module):
        text = repr(spec)
        return spec, text if "\n" not in text else f"{type(spec).__name__}(...)"
    op, text = build_target(where, spec)
    if not isinstance(op, nn.Module):
        raise ConfigError(f"{where}: {text} is not an image op (torch.nn.Module)")
    return op, text


def build_mix(spec: Mixup | Mapping[str, Any]) -> tuple[Mixup, str]:
    """timm's Mixup and its description, checked: timm itself only fails at the first batch."""
    from timm.data import Mixup

    where = "augmentation.mix"
    mix, text = (spec, "") if isinstance(spec, Mixup) else build_target(where, spec)
    if not isinstance(mix, Mixup):
        raise ConfigError(f"{where}: {text} is not a timm.data.Mixup")
    attrs = {
        "mixup_alpha": mix.mixup_alpha,
        "cutmix_alpha": mix.cutmix_alpha,
        "prob": mix.mix_prob,
        "switch_prob": mix.switch_prob,
        "mode": mix.mode,
        "label_smoothing": mix.label_smoothing,
        "num_classes": mix.num_classes,
    }
    check_args(where, attrs)
    if mix.mixup_alpha <= 0 and mix.cutmix_alpha <= 0:
        raise ConfigError(
            f"{where} needs mixup_alpha > 0 or cutmix_alpha > 0, got {mix.mixup_alpha} and "
            f"{mix.cutmix_alpha}; augmentation.mix=null turns mixing off"
        )
    if mix.mode not in MIX_MODES:
        raise ConfigError(f"{where}.mode: {unknown_choice('mix mode', mix.mode, MIX_MODES)}")
    if not 0.0 <= mix.label_smoothing < 1.0:
        raise ConfigError(f"{where}.label_smoothing must be in [0, 1), got {mix.label_smoothing}")
    if mix.num_classes < 2:
        raise ConfigError(f"{where}.num_classes must be at least 2, got {mix.num_classes}")
    return mix, text or "Mixup(" + ", ".join(f"{k}={v!r}" for k, v in attrs.items()) + ")"


def build_target(where: str, spec: Mapping[str, Any]) -> tuple[Any, str]:
    """Instantiate a ``_target_`` config after checking its arguments; errors on one line."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    target = spec.get("_target_") if isinstance(spec, Mapping) else None
    if not target:
        raise ConfigError(
            f"{where} must be a config with a _target_ (e.g. kornia.augmentation.RandomCrop) or "
            f"null, got {spec!r}"
        )
    try:
        get_object(target)
    except Exception:
        raise ConfigError(
            f"{where}._target_: {unknown_choice('augmentation op', target, kornia_ops())}"
        ) from None
    args = {k: v for k, v in spec.items() if not str(k).startswith("_")}
    check_args(where, args)
    name = target.removeprefix("kornia.augmentation.")
    text = f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    try:
        return instantiate(spec, _convert_="all"), text
    except Exception as err:  # the op's own validation, e.g. kornia's reversed-scale check
        raise ConfigError(f"{where}: {text} rejected its arguments: {reason(err)}") from err


def check_args(where: str, args: Mapping[str, Any]) -> None:
    """Probabilities in [0, 1], non-negative sizes and alphas, (low, high) ranges ordered."""
    for key, value in args.items():
        name = f"{where}.{key}"
        if key in PROBABILITIES and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"{name} is a probability and must be in [0, 1], got {value!r}")
        if key in NON_NEGATIVE and any(v < 0 for v in _numbers(value)):
            raise ConfigError(f"{name} must be non-negative, got {value!r}")
        if key in RANGES and value is not None:
            bounds = list(_numbers(value))
            pairs = list(zip(bounds[::2], bounds[1::2], strict=False))  # odd count fails below
            if len(bounds) not in (2, 4) or any(low > high for low, high in pairs):
                raise ConfigError(
                    f"{name} must be a (low, high) range with low <= high, got {value!r}"
                )


def kornia_ops() -> list[str]:
    """Importable names of kornia's 2D image ops, the valid choices named in errors."""
    import kornia.augmentation as K

    skip = ("Base", "3D", "Sequential", "Dispather", "MixUp", "CutMix")
    names = [
        f"kornia.augmentation.{n}"
        for n in K.__all__
        if isinstance(getattr(K, n, None), type)
        and issubclass(getattr(K, n), nn.Module)
        and not any(s in n for s in skip)
    ]
    auto = ("AutoAugment", "RandAugment", "TrivialAugment")
    return names + [f"kornia.augmentation.auto.{n}" for n in auto]


def probe(op: nn.Module, x: Tensor) -> Tensor:
    """``op(x)`` on a copy with every probability gate open and, for policy ops (RandAugment),
    every candidate sub-policy tried, not just the ones this draw picks."""
    from kornia.augmentation.auto.base import PolicyAugmentBase

    op = copy.deepcopy(op)
    for module in op.modules():
        if hasattr(module, "p_batch"):  # kornia reads p / p_batch at call time
            module.p, module.p_batch = 1.0, 1.0
    if isinstance(op, PolicyAugmentBase):
        for candidate in op.children():
            candidate(x)
    return op(x)


def batch_seed(seed: int, index: int) -> int:
    """A 32-bit seed for batch ``index`` of process ``rank``: SeedSequence mixes the three, so
    nearby (seed, index) pairs give unrelated streams (seed 1 is not seed 0 shifted by a batch)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return int(np.random.SeedSequence((seed, rank, index)).generate_state(1)[0])


@contextmanager
def seeded(seed: int, device: torch.device, numpy: bool = True) -> Iterator[None]:
    """Seed torch's (CPU and ``device``) and, with ``numpy``, numpy's global generator, restoring
    them afterwards.

    kornia draws from torch's global generator and timm's Mixup from numpy's; neither takes a
    generator argument, so the global ones are forked instead. Saving numpy's state costs ~0.1 ms,
    so it is only done when something draws from it.
    """
    accelerator = device.type != "cpu"
    numpy_state = np.random.get_state() if numpy else None
    with torch.random.fork_rng(
        devices=[device] if accelerator else [], device_type=device.type if accelerator else None
    ):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accelerator:
            torch.get_device_module(device.type).manual_seed(seed)
        if numpy_state is not None:
            np.random.seed(seed)
        try:
            yield
        finally:
            if numpy_state is not None:
                np.random.set_state(numpy_state)


def reason(err: BaseException) -> str:
    """The innermost cause of ``err`` on one line (Hydra wraps the target's own error)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any) -> Iterator[float]:
    """Every number in a scalar or (nested) list/tuple; other values contribute none."""
    if _is_number(value):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _numbers(item)
