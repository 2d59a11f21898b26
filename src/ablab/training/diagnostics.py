"""Per-layer training diagnostics: the evidence behind the notes' claims on init, BN and activations.

Every ``every_n_steps`` optimizer steps (and at step 0, before any update) the callback logs, per
layer, to the run's logger (MLflow) at exactly that global step:

- ``diag/act_mean/<layer>``, ``diag/act_std/<layer>``: mean and std of the layer's output on a fixed
  probe batch — the forward signal that vanishes or explodes with depth under a bad init scale
  (Glorot & Bengio 2010; He et al. 2015) and that BatchNorm keeps at unit scale (Ioffe & Szegedy 2015).
- ``diag/dead/<act>``: fraction of an activation's units (channels) through which no gradient flows:
  ∂L/∂x at the activation's input x is exactly 0 for every probe sample and position, in a
  backward pass of the task's loss on the probe's labels. A dead unit's incoming weights learn
  nothing from these inputs — "dying ReLU" (Maas et al. 2013; Lu et al. 2019, "Dying ReLU and
  initialization") defined by what it does: a ReLU unit that is never positive is dead, a Leaky
  ReLU or PReLU unit never is (slope α ≠ 0) unless the gradient from above is itself zero, and a
  saturated sigmoid whose gradient is tiny but not zero is not dead. Every activation type.
- ``diag/never_positive/<act>``: fraction of a ReLU-family activation's (ReLU, ReLU6, Leaky ReLU,
  PReLU) units whose output is ≤ 0 for every probe sample and position — the usual definition of
  a dead ReLU, which for Leaky ReLU and PReLU counts units that still learn; set beside
  ``dead`` it shows how many never-positive units still pass gradient.
- ``diag/grad_norm/<layer>``: ‖∂L/∂W‖₂ of the layer's weight on the training batch of that step
  (before gradient clipping; unscaled under AMP) — vanishing or exploding gradients.
- ``diag/update_ratio/<layer>``: ‖W_{s+1} − W_s‖₂ / ‖W_s‖₂, the relative change the optimizer
  actually made at step s (lr·‖g‖ would be wrong for Adam and momentum); NaN when ‖W_s‖ = 0.
- ``diag/identical_units/<layer>``: fraction of output units whose incoming weights and bias equal
  another unit's exactly — 1 for every hidden layer of a zero-initialised net, where the symmetry
  between units is never broken because identical units get identical gradients.
- ``diag/unit_spread/<layer>``: RMS over inputs of the std across units of the weight rows,
  divided by the weights' RMS — 0 when all units are identical, ≈1 for an i.i.d. zero-mean init
  (a continuous view of the same symmetry, robust to round-off).
- ``diag/bn_mean_abs/<bn>``, ``diag/bn_var/<bn>``: channel means of |running_mean| and running_var.

At the end of training, ``diagnostics/layers.png`` (activation std per layer at init vs end,
gradient norm per layer, dead fraction) and ``diagnostics/layers.json`` (the same numbers) are
logged as MLflow artifacts.

Layers are named relative to the task's ``net`` (``stages.0.1.act``), so runs of the same
architecture log identical metric keys whatever the init, optimizer or seed.

Probe batch: the first ``probe_size`` images of the first training batch, as the model receives
them (transferred, augmented, standardised), with their labels (soft ones under mixup), kept for
the whole run: every snapshot measures the same inputs, and runs with the same data seed measure
the same inputs.

Probe pass: a forward with every module in eval mode (dropout and drop-path off, so numbers do
not jitter) except batch-norm layers, which normalise with the probe's own batch statistics as in
training — in eval mode BN would use its running stats, which are (0, 1) at init and would make
BN look like the identity in the very snapshot the BN claims are about. Then the task's
``loss_fn`` on the probe's labels (the main output only: no auxiliary heads, no l1 term) and
``torch.autograd.grad`` of it with respect to each tracked activation's input alone, so the
parameters' ``.grad`` and the optimizer step are untouched; under fp16 AMP the loss is scaled by
the trainer's current loss scale, so a gradient reads zero exactly when it would underflow in the
training backward. Without labels in the batch or a ``loss_fn`` on the task, ``dead`` is not
logged (a warning says so) and the pass is forward-only under ``torch.no_grad``. Every buffer of
the network is saved before and restored after, so the probe leaves BN running stats (and
``num_batches_tracked``) exactly as training left them; training-mode flags are restored too.
Hooks exist only during the probe pass: normal training steps pay nothing.

Measured layers: the outputs of every conv, linear and activation module (``kinds``; ``norm``
adds normalisation outputs), gradient/update/symmetry metrics for every conv and linear weight,
BN stats for every BatchNorm; ``max_layers`` keeps at most that many per role, evenly spaced over
depth (first and last always kept). A snapshot costs one probe forward, a backward to the
activations' inputs (no weight gradients) and a statistic per layer: for ResNet-20 on 28 px digits
with a probe of 64, on one CPU thread, 0.41 s (0.22 s without the backward, i.e. without
``dead``) against 0.23 s per training step at batch 64, so ``every_n_steps=50`` adds about 3.5%
to training.

DDP: the probe pass, backward included, runs on every rank (a SyncBatchNorm all-reduce in it must
be matched on all ranks), statistics are computed and logged on global rank 0 only. A resumed run
draws its probe from its own first batch (the probe is not checkpointed: at 224 px it would weigh
38 MB).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ablab.errors import ConfigError, unknown_choice
from ablab.layers import make_act
from ablab.registry import ACT


def _activation_types() -> tuple[type[nn.Module], ...]:
    """The module classes of every activation in the ``ACT`` table (identity excluded)."""
    registered = {type(make_act(name, 1)) for name in ACT}
    registered.discard(nn.Identity)
    # torch activations no ablab config builds, for external (timm) backbones
    extra = {nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.Hardsigmoid, nn.Hardtanh}
    return tuple(sorted(registered | extra, key=lambda t: t.__name__))


#: Module types whose output statistics each ``kinds`` entry selects.
KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (_ConvNd,),
    "linear": (nn.Linear,),
    "act": _activation_types(),
    "norm": (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm),
}
#: Layers whose weights get gradient, update and symmetry metrics.
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (_ConvNd, nn.Linear)
#: Activations that output exactly 0 (ReLU, ReLU6) or a small-slope negative part (leaky, PReLU)
#: for negative inputs: the ones whose never-positive fraction is logged (``never_positive``).
RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU)


@dataclass
class Snapshot:
    """Per-layer numbers of one step: ``values[family][layer]``."""

    step: int
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, family: str, layer: str, value: float) -> None:
        self.values.setdefault(family, {})[layer] = value

    def metrics(self) -> dict[str, float]:
        """Flat ``diag/<family>/<layer>`` metric names."""
        return {
            f"diag/{family}/{layer}": value
            for family, layers in self.values.items()
            for layer, value in layers.items()
        }


class _UnitMask:
    """Per-unit OR over a module's calls of "true somewhere": (…, C, …) → (C,) booleans."""

    def __init__(self, unit_dim: int | None) -> None:
        self.unit_dim = unit_dim
        self.mask: Tensor | None = None
        self.consistent = True

    def update(self, flags: Tensor) -> None:
        # None: by layout, channels-first (N, C, ...) and (N, C), but a transformer's tokens
        # (N, L, D) have their units (features) last
        unit = self.unit_dim if self.unit_dim is not None else (-1 if flags.ndim == 3 else 1)
        dims = [d for d in range(flags.ndim) if d != unit % flags.ndim]
        units = flags.any(dim=dims) if dims else flags
        if self.mask is None:
            self.mask = units
        elif self.mask.shape == units.shape:
            self.mask = self.mask | units
        else:  # a shared activation applied to layers of different widths: no unit identity
            self.consistent = False

    def fraction_without(self) -> float | None:
        """Fraction of units for which it was never true; ``None`` when units are not defined."""
        if self.mask is None or not self.consistent:
            return None
        return 1.0 - self.mask.float().mean().item()


@dataclass
class _OutputStats:
    """A module's outputs in one probe forward: per-call (size, mean, var), units ever > 0."""

    unit_dim: int | None
    track_positive: bool
    calls: list[tuple[int, Tensor, Tensor]] = field(default_factory=list)
    positive: _UnitMask = field(init=False)

    def __post_init__(self) -> None:
        self.positive = _UnitMask(self.unit_dim)

    def update(self, out: Tensor) -> None:
        # tensors only: no device sync in the middle of the forward
        out = out.detach().float()
        var, mean = torch.var_mean(out, correction=0)
        self.calls.append((out.numel(), mean, var))
        if self.track_positive:
            self.positive.update(out > 0)

    def moments(self) -> tuple[float, float]:
        """Mean and std over every element of every call (a module may run more than once)."""
        n = torch.tensor([c[0] for c in self.calls], dtype=torch.float64)
        means = torch.stack([c[1] for c in self.calls]).double().cpu()
        variances = torch.stack([c[2] for c in self.calls]).double().cpu()
        weights = n / n.sum()
        mean = (weights * means).sum()
        # law of total variance: within-call variance plus the spread of the call means
        var = (weights * (variances + (means - mean).square())).sum()
        return mean.item(), var.sqrt().item()


def unit_symmetry(layer: nn.Module) -> tuple[float, float]:
    """(fraction of units with an exact duplicate, between-unit std / weight RMS) of ``layer``.

    A unit is one output channel/feature; its row is its incoming weights and its bias.
    """
    weight = layer.weight.detach()
    if isinstance(layer, _ConvNd) and layer.transposed:  # (c_in, c_out/groups, k…)
        weight = weight.transpose(0, 1)
    rows = weight.flatten(1).double()  # (units, fan_in)
    if getattr(layer, "bias", None) is not None:
        rows = torch.cat([rows, layer.bias.detach().double()[:, None]], dim=1)
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    identical = (counts[inverse] > 1).double().mean().item()
    rms = rows.square().mean().sqrt()
    between = rows.var(dim=0, correction=0).mean().sqrt()
    spread = (between / rms).item() if rms > 0 else 0.0
    return identical, spread


def evenly_spaced(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spaced and including the first and last."""
    if len(items) <= limit:
        return list(items)
    index = torch.linspace(0, len(items) - 1, limit).round().long().unique().tolist()
    return [items[i] for i in index]


@dataclass
class _Layers:
    """The tracked modules by role, in definition (≈ depth) order."""

    outputs: list[tuple[str, nn.Module]]
    weights: list[tuple[str, nn.Module]]
    batch_norms: list[tuple[str, _BatchNorm]]


class LayerDiagnostics(Callback):
    """Every N steps: per-layer activation, gradient, update, dead-unit, symmetry and BN stats."""

    def __init__(
        self,
        every_n_steps: int = 50,
        probe_size: int | None = 64,
        kinds: Iterable[str] = ("conv", "linear", "act"),
        max_layers: int = 64,
        artifact_dir: str = "diagnostics",
    ) -> None:
        """``kinds`` picks whose outputs are measured (``conv linear act norm``); gradient,
        update and symmetry metrics cover every conv/linear layer, BN running stats every
        BatchNorm. ``max_layers`` caps each role (outputs, weights, BN) at that many, evenly
        spaced over depth. ``probe_size=None`` keeps the whole first batch."""
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(
                f"callbacks.diagnostics.every_n_steps must be a positive integer, got {every_n_steps}"
            )
        if probe_size is not None and (not isinstance(probe_size, int) or probe_size < 1):
            raise ConfigError(
                f"callbacks.diagnostics.probe_size must be a positive integer or null, "
                f"got {probe_size}"
            )
        if not isinstance(max_layers, int) or max_layers < 2:
            raise ConfigError(
                f"callbacks.diagnostics.max_layers must be an integer ≥ 2, got {max_layers}"
            )
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        for kind in kinds:
            if kind not in KINDS:
                raise unknown_choice("diagnostics kind", kind, KINDS)
        self.every_n_steps = every_n_steps
        self.probe_size = probe_size
        self.kinds = kinds
        self.max_layers = max_layers
        self.artifact_dir = artifact_dir
        self.probe: Tensor | None = None
        self.probe_target: Tensor | None = None  # the probe's labels, for the dead-unit backward
        self.layers: _Layers | None = None
        self.first: Snapshot | None = None  # forward numbers at the first snapshot (init)
        self.last: Snapshot | None = None  # forward numbers at the last snapshot (end)
        self.first_grads: Snapshot | None = None
        self.last_grads: Snapshot | None = None
        self._forward_step: int | None = None  # step of the last forward snapshot
        self._pending: Snapshot | None = None  # gradient/update numbers of the step in flight
        self._before: dict[str, Tensor] = {}

    # -- selecting layers ---------------------------------------------------------------------
    @staticmethod
    def network(pl_module: pl.LightningModule) -> nn.Module:
        """The injected ``net`` of ablab's tasks (names without the ``net.`` prefix), else the module."""
        net = getattr(pl_module, "net", None)
        return net if isinstance(net, nn.Module) else pl_module

    def select_layers(self, net: nn.Module) -> _Layers:
        """Tracked modules of ``net`` by role, each role capped at ``max_layers``."""
        output_types = tuple(t for kind in self.kinds for t in KINDS[kind])
        named = list(net.named_modules())
        outputs = [(n, m) for n, m in named if output_types and isinstance(m, output_types)]
        weights = [(n, m) for n, m in named if isinstance(m, WEIGHT_TYPES)]
        norms = [
            (n, m)
            for n, m in named
            if isinstance(m, _BatchNorm)
            and m.running_mean is not None
            and m.running_var is not None
        ]
        cap = self.max_layers
        return _Layers(
            evenly_spaced(outputs, cap), evenly_spaced(weights, cap), evenly_spaced(norms, cap)
        )

    def kind_of(self, module: nn.Module) -> str:
        """The first of ``kinds`` whose types ``module`` is an instance of."""
        return next(kind for kind in self.kinds if isinstance(module, KINDS[kind]))

    # -- measuring ----------------------------------------------------------------------------
    @staticmethod
    @contextmanager
    def probe_mode(net: nn.Module) -> Iterator[None]:
        """Every module in eval except batch norms; all buffers and modes restored after."""
        modes = {m: m.training for m in net.modules()}
        buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
        try:
            for m in modes:
                m.training = isinstance(m, _BatchNorm)
            yield
        finally:
            with torch.no_grad():
                for name, b in net.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])
            for m, mode in modes.items():
                m.training = mode

    @staticmethod
    def probe_loss(pl_module: pl.LightningModule) -> Callable[[Tensor, Tensor], Tensor] | None:
        """The task's loss function (``loss_fn`` of ablab's classifier), if it has one."""
        loss_fn = getattr(pl_module, "loss_fn", None)
        return loss_fn if callable(loss_fn) else None

    def measure_forward(
        self, pl_module: pl.LightningModule, step: int, trainer: pl.Trainer | None = None
    ) -> Snapshot | None:
        """Probe-pass statistics, dead units, weight symmetry and BN stats at ``step``.

        Runs the probe forward, and the backward to the activations' inputs when the probe has
        labels and the task a loss (on every rank under DDP); returns the numbers on global
        rank 0 and ``None`` on other ranks.
        """
        if self.probe is None:
            raise RuntimeError("LayerDiagnostics has no probe batch yet")
        net = self.network(pl_module)
        if self.layers is None:
            self.layers = self.select_layers(net)
        record = trainer is None or trainer.is_global_zero
        loss_fn = self.probe_loss(pl_module)
        # (no autograd graph can be built under inference mode)
        backward = (
            loss_fn is not None
            and self.probe_target is not None
            and not torch.is_inference_mode_enabled()
        )
        outputs: dict[str, _OutputStats] = {}
        inputs: dict[str, list[Tensor]] = {}  # activation inputs, in call order
        handles = []
        for name, module in self.layers.outputs:
            # Linear maps the last dim (tokens are (N, L, D)); convs and norms work
            # channels-first, so units are dim 1; an activation follows its input's layout
            # (channels-first, or (N, L, D) tokens in a transformer's MLP)
            unit_dim = -1 if isinstance(module, nn.Linear) else 1
            unit_dim = None if isinstance(module, KINDS["act"]) else unit_dim
            if record:
                stats = outputs[name] = _OutputStats(unit_dim, isinstance(module, RELU_FAMILY))

                def hook(_m, _inp, out, stats=stats) -> None:
                    if isinstance(out, Tensor):
                        stats.update(out)

                handles.append(module.register_forward_hook(hook))
            # every rank: the backward must be the same everywhere (SyncBatchNorm all-reduces)
            if backward and isinstance(module, KINDS["act"]):
                calls = inputs[name] = []

                def capture(_m, args, calls=calls) -> tuple[Any, ...] | None:
                    x = args[0] if args else None
                    if not isinstance(x, Tensor) or not x.is_floating_point():
                        return None
                    # ∂L/∂x is taken at a copy that only this activation reads, and it gets
                    # a second copy to work on: an in-place activation (ReLU(inplace=True))
                    # would otherwise overwrite the tensor and its place in the graph
                    x = x.clone() if x.requires_grad else x.detach().requires_grad_()
                    calls.append(x)
                    return (x.clone(), *args[1:])

                handles.append(module.register_forward_pre_hook(capture))
        precision = trainer.precision_plugin.train_step_context() if trainer else nullcontext()
        flowing = {name: _UnitMask(None) for name in inputs}
        try:
            with self.probe_mode(net), torch.set_grad_enabled(backward):
                with precision:
                    out = pl_module(self.probe)
                    loss = loss_fn(out, self.probe_target) if backward else None
                captured = [(name, x) for name, calls in inputs.items() for x in calls]
                grads: Sequence[Tensor | None] = [None] * len(captured)  # nothing reaches them
                if loss is not None and loss.requires_grad and captured:
                    # gradients of the captured tensors only: parameters' .grad stay as they
                    # are. Scaled as training scales it under fp16 AMP, so a gradient is zero
                    # here exactly when it underflows to zero in the training backward.
                    scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer else None
                    if scaler is not None and scaler.is_enabled():
                        loss = loss * scaler.get_scale()
                    grads = torch.autograd.grad(loss, [x for _, x in captured], allow_unused=True)
                if record:
                    for (name, x), grad in zip(captured, grads, strict=True):
                        flowing[name].update(
                            torch.zeros_like(x, dtype=torch.bool) if grad is None else grad != 0
                        )
        finally:
            for handle in handles:
                handle.remove()
        if not record:
            return None
        snap = Snapshot(step)
        for name, stats in outputs.items():
            if not stats.calls:  # not on this forward path (e.g. training-only aux heads)
                continue
            mean, std = stats.moments()
            snap.add("act_mean", name, mean)
            snap.add("act_std", name, std)
            dead = flowing[name].fraction_without() if name in flowing else None
            if dead is not None:
                snap.add("dead", name, dead)
            never_positive = stats.positive.fraction_without()
            if never_positive is not None:
                snap.add("never_positive", name, never_positive)
        for name, layer in self.layers.weights:
            identical, spread = unit_symmetry(layer)
            snap.add("identical_units", name, identical)
            snap.add("unit_spread", name, spread)
        for name, bn in self.layers.batch_norms:
            snap.add("bn_mean_abs", name, bn.running_mean.abs().mean().item())
            snap.add("bn_var", name, bn.running_var.mean().item())
        return snap

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.probe is None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"LayerDiagnostics needs the batch's inputs as a tensor (or first item of a "
                    f"tuple), got {type(x).__name__}"
                )
            self.probe = x[: self.probe_size].detach().clone()
            y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            if isinstance(y, Tensor) and len(y) == len(x):
                self.probe_target = y[: self.probe_size].detach().clone()
            if self.probe_target is None or self.probe_loss(pl_module) is None:
                rank_zero_warn(
                    "LayerDiagnostics logs no diag/dead: it needs the batch's labels (second "
                    "item of a tuple) and the task's loss_fn for the probe's backward"
                )
        step = trainer.global_step
        if step % self.every_n_steps or step == self._forward_step:
            return  # off the grid, or another micro-batch of an accumulated step
        self._forward_step = step
        snap = self.measure_forward(pl_module, step, trainer)
        if snap is None:
            return
        self.log_snapshot(trainer, snap)
        if self.first is None:
            self.first = snap
        self.last = snap
        self._pending = Snapshot(step)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        pending = self._pending
        if pending is None or pending.step != trainer.global_step or self.layers is None:
            return
        for name, layer in self.layers.weights:
            weight = layer.weight
            if weight.grad is not None:
                pending.add("grad_norm", name, torch.linalg.vector_norm(weight.grad).item())
            self._before[name] = weight.detach().clone()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        pending = self._pending
        if pending is None or trainer.global_step == pending.step or self.layers is None:
            return  # no optimizer step yet (gradient accumulation)
        for name, layer in self.layers.weights:
            before = self._before.get(name)
            if before is None:
                continue
            norm = torch.linalg.vector_norm(before).item()
            change = torch.linalg.vector_norm(layer.weight.detach() - before).item()
            pending.add("update_ratio", name, change / norm if norm > 0 else float("nan"))
        self._before.clear()
        self._pending = None
        self.log_snapshot(trainer, pending)
        if self.first_grads is None:
            self.first_grads = pending
        self.last_grads = pending

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None:
            return  # no training batch ran
        step = trainer.global_step
        if step != self._forward_step:  # the final weights are not measured yet
            self._forward_step = step
            snap = self.measure_forward(pl_module, step, trainer)
            if snap is None:
                return
            if step % self.every_n_steps == 0:  # metric steps stay on the 0, N, 2N, … grid
                self.log_snapshot(trainer, snap)
            self.last = snap
        if trainer.is_global_zero:
            self.log_artifacts(trainer)

    # -- output -------------------------------------------------------------------------------
    @staticmethod
    def log_snapshot(trainer: pl.Trainer, snap: Snapshot) -> None:
        """Log ``snap`` at exactly its step to every logger, in chunks MLflow accepts."""
        metrics = snap.metrics()
        items = list(metrics.items())
        for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            chunk = dict(items[start : start + 1000])
            for logger in trainer.loggers:
                logger.log_metrics(chunk, step=snap.step)

    def summary(self) -> dict[str, Any]:
        """The numbers behind the plot: first and last snapshots, layers in depth order."""
        layers = self.layers or _Layers([], [], [])

        def pack(forward: Snapshot | None, grads: Snapshot | None) -> dict[str, Any]:
            return {
                "step": forward.step if forward else None,
                **(forward.values if forward else {}),
                "grad_step": grads.step if grads else None,
                **(grads.values if grads else {}),
            }

        return {
            "every_n_steps": self.every_n_steps,
            "probe_size": None if self.probe is None else len(self.probe),
            "layers": {
                "outputs": [n for n, _ in layers.outputs],
                "weights": [n for n, _ in layers.weights],
                "batch_norms": [n for n, _ in layers.batch_norms],
                "kinds": {
                    **{
                        n: "conv" if isinstance(m, _ConvNd) else "linear" for n, m in layers.weights
                    },
                    **{n: self.kind_of(m) for n, m in layers.outputs},
                },
            },
            "init": pack(self.first, self.first_grads),
            "end": pack(self.last, self.last_grads),
        }

    def figure(self, summary: dict[str, Any]) -> Figure:
        """Activation std per layer (init vs end), gradient norm per layer, dead fraction."""
        fig = Figure(figsize=(11, 10), layout="constrained")
        axes = fig.subplots(3, 1)
        panels = (
            ("act_std", "outputs", "output std on the probe batch", "step"),
            (
                "grad_norm",
                "weights",
                "weight gradient norm ‖∂L/∂W‖ on the training batch",
                "grad_step",
            ),
            (
                "dead",
                "outputs",
                "dead fraction of activation units (∂L/∂input = 0 on every probe input)",
                "step",
            ),
        )
        kinds = summary["layers"]["kinds"]
        colours = {kind: f"C{i}" for i, kind in enumerate(KINDS)}  # the same in every panel
        for ax, (family, role, title, step_key) in zip(axes, panels, strict=True):
            names = [n for n in summary["layers"][role] if n in summary["init"].get(family, {})]
            ax.set_title(title)
            if not names:
                ax.text(
                    0.5, 0.5, "no such layers", ha="center", va="center", transform=ax.transAxes
                )
                ax.set_axis_off()
                continue
            plotted: list[float] = []
            for kind in sorted({kinds[n] for n in names}):  # pre-activations vs activations
                index = [i for i, n in enumerate(names) if kinds[n] == kind]
                for point, style in (("init", "-"), ("end", "--")):
                    snap = summary[point]
                    values = [snap.get(family, {}).get(names[i], float("nan")) for i in index]
                    plotted += values
                    label = f"{kind}, {point} (step {snap[step_key]})"
                    ax.plot(
                        index, values, style, marker="o", ms=3, color=colours[kind], label=label
                    )
            if family == "dead":
                ax.set_ylim(-0.03, 1.03)
            else:  # spans orders of magnitude; symlog keeps exact zeros visible
                positive = [v for v in plotted if v > 0]
                if len(positive) == sum(not math.isnan(v) for v in plotted):
                    ax.set_yscale("log")
                else:
                    ax.set_yscale("symlog", linthresh=min(positive, default=1e-6))
            ax.set_xlabel("layer (depth order)")
            every = max(1, len(names) // 40)
            ax.set_xticks(range(0, len(names), every))
            ax.set_xticklabels(names[::every], rotation=90, fontsize=6)
            ax.legend(fontsize=7)
        return fig

    def log_artifacts(self, trainer: pl.Trainer) -> None:
        """``<artifact_dir>/layers.png`` and ``layers.json`` into the MLflow run."""
        logger = trainer.logger
        if not isinstance(logger, MLFlowLogger) or self.first is None:
            return
        summary = self.summary()
        client, run_id = logger.experiment, logger.run_id
        client.log_figure(run_id, self.figure(summary), f"{self.artifact_dir}/layers.png")
        client.log_text(
            run_id,
            json.dumps(summary, indent=1, allow_nan=True),
            f"{self.artifact_dir}/layers.json",
        )
