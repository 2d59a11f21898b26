"""Inference speed of the trained network, and of its structurally re-parameterised (fused) form.

Evidence for two claims of the notes:

- RepVGG (Ding et al. 2021, "RepVGG: Making VGG-style ConvNets Great Again"): the single-path net
  obtained by folding each block's BN into its convs and summing the 3x3, 1x1 and identity branches
  into one 3x3 conv computes the same function as the multi-branch training net, and runs faster
  (the notes cite a 17% speed-up from folding BN into the conv alone).
- Conv efficiency: measured throughput of nets built from 5x5 convs, two stacked 3x3 convs
  (Szegedy et al. 2016, "Rethinking the Inception Architecture"), depthwise-separable convs
  (Howard et al. 2017, MobileNets) or 1x1 bottlenecks (He et al. 2016), which MACs alone do not give.

Once ``trainer.test`` has finished (``on_test_end``: the weights it tested, i.e. the best
checkpoint in an ablab run), on global rank 0 only:

- Timing: the network's forward on one batch of ``batch_size`` test images, transferred and
  standardised exactly as the test step receives them (Lightning's evaluation loop's own steps:
  precision input conversion, ``on_before_batch_transfer``, ``batch_to_device`` with the data
  module's ``on_after_batch_transfer``), on the module's device, in eval mode under
  ``torch.inference_mode`` and the trainer's precision context, measured with
  ``torch.utils.benchmark.Timer.blocked_autorange`` (which warms up and picks a block size that
  makes timer overhead negligible), on a clock that first waits for the device's queued kernels
  (:func:`device_clock`). ``bench/ms_per_batch`` is the median time of one forward over all
  timed blocks, ``bench/ms_iqr`` their interquartile range, ``bench/images_per_s`` =
  batch_size / median, ``bench/threads`` the intra-op threads timed with.
- Fused form: when ``fused`` and the network has ``reparameterize()``, a deep copy of it is fused
  (the network itself is never touched) and timed in the same way. The two nets are timed in
  ``rounds`` alternating blocks (A B B A A B …, ``min_run_time / rounds`` seconds each), so a drift
  in machine load falls on both alike; ``bench/fused/speedup`` = unfused median / fused median.
  Over every test batch the trainer tested on (``limit_test_batches`` applies; under DDP rank 0's
  share), the two nets' logits z (unfused) and z' (fused) give ``reparam/max_abs_diff``
  = max |z' − z|, ``reparam/max_rel_diff`` = max |z' − z| / max |z|, ``reparam/agreement`` = the
  fraction of samples with the same arg-max, and ``reparam/params`` / ``reparam/fused_params`` the
  parameter counts.

Metrics go to every logger of the trainer (MLflow) at ``trainer.global_step``, like the test
metrics; ``self.log`` is not allowed in ``on_test_end``. The per-block times of each net are
logged as ``benchmark/inference.json`` (MLflow only). The module's training flags, weights,
buffers and device are left exactly as they were.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import timeit
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger
from torch import Tensor, nn
from torch.utils.benchmark import Measurement, Timer

from ablab.errors import ConfigError
from ablab.training.diagnostics import LayerDiagnostics


@dataclass
class Timing:
    """One net's timed blocks: the replicates of every round, merged into one ``Measurement``
    of per-block seconds per forward."""

    replicates: list[Measurement]
    batch_size: int

    def __post_init__(self) -> None:
        # one timer per net, so merge yields exactly one Measurement
        (self.measurement,) = Measurement.merge(self.replicates)

    @property
    def ms_per_batch(self) -> float:
        return self.measurement.median * 1e3

    @property
    def ms_iqr(self) -> float:
        return self.measurement.iqr * 1e3

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.measurement.median

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/ms_per_batch": self.ms_per_batch,
            f"{prefix}/ms_iqr": self.ms_iqr,
            f"{prefix}/images_per_s": self.images_per_s,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "ms_per_batch": self.ms_per_batch,
            "ms_iqr": self.ms_iqr,
            "ms_mean": self.measurement.mean * 1e3,
            "images_per_s": self.images_per_s,
            "block_ms": [t * 1e3 for t in self.measurement.times],
            "forwards_per_block": [m.number_per_run for m in self.replicates],  # per round
        }


@dataclass
class Agreement:
    """Unfused vs fused logits over the test batches (running maxima and counts)."""

    max_abs_diff: float = 0.0
    max_abs_logit: float = 0.0
    same: int = 0
    samples: int = 0

    def update(self, logits: Tensor, fused_logits: Tensor) -> None:
        logits, fused_logits = logits.float(), fused_logits.float()
        diff = (fused_logits - logits).abs().max().item()
        self.max_abs_diff = max(self.max_abs_diff, diff)
        self.max_abs_logit = max(self.max_abs_logit, logits.abs().max().item())
        self.same += int((logits.argmax(1) == fused_logits.argmax(1)).sum().item())
        self.samples += len(logits)

    def metrics(self) -> dict[str, float]:
        scale = self.max_abs_logit
        return {
            "reparam/max_abs_diff": self.max_abs_diff,
            "reparam/max_rel_diff": self.max_abs_diff / scale if scale > 0 else math.nan,
            "reparam/agreement": self.same / self.samples if self.samples else math.nan,
        }


@dataclass
class BenchmarkResult:
    """Everything one benchmark measured."""

    step: int
    device: str
    threads: int
    batch_shape: list[int]
    dtype: str
    unfused: Timing
    fused: Timing | None = None
    agreement: Agreement | None = None
    params: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        metrics = {
            **self.unfused.metrics("bench"),
            "bench/threads": float(self.threads),
            "bench/batch_size": float(self.batch_shape[0]),
        }
        if self.fused is not None:
            metrics |= self.fused.metrics("bench/fused")
            metrics["bench/fused/speedup"] = self.unfused.ms_per_batch / self.fused.ms_per_batch
        if self.agreement is not None:
            metrics |= self.agreement.metrics()
            metrics["reparam/params"] = float(self.params["unfused"])
            metrics["reparam/fused_params"] = float(self.params["fused"])
        return metrics

    def summary(self) -> dict[str, Any]:
        nets = {"unfused": self.unfused.summary()}
        if self.fused is not None:
            nets["fused"] = self.fused.summary()
        return {
            "step": self.step,
            "device": self.device,
            "threads": self.threads,
            "batch_shape": self.batch_shape,
            "dtype": self.dtype,
            "torch": torch.__version__,
            "nets": nets,
            "metrics": self.metrics(),
        }


class InferenceBenchmark(Callback):
    """After testing: forward time of the net on a test batch, and of its fused copy if it has one."""

    def __init__(
        self,
        batch_size: int = 64,
        min_run_time: float = 1.0,
        fused: bool = True,
        rounds: int = 4,
        num_threads: int | None = None,
        artifact_file: str = "benchmark/inference.json",
    ) -> None:
        """``min_run_time`` is the timed seconds per net, split over ``rounds`` alternating
        blocks; ``num_threads=None`` times with the process's ``torch.get_num_threads()``."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(
                f"callbacks.benchmark.batch_size must be a positive integer, got {batch_size}"
            )
        if not isinstance(min_run_time, (int, float)) or not min_run_time > 0:
            raise ConfigError(
                f"callbacks.benchmark.min_run_time must be a positive number of seconds, "
                f"got {min_run_time}"
            )
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ConfigError(
                f"callbacks.benchmark.rounds must be a positive integer, got {rounds}"
            )
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ConfigError(
                f"callbacks.benchmark.num_threads must be a positive integer or null, "
                f"got {num_threads}"
            )
        self.batch_size = batch_size
        self.min_run_time = float(min_run_time)
        self.fused = bool(fused)
        self.rounds = rounds
        self.num_threads = num_threads
        self.artifact_file = artifact_file
        self.result: BenchmarkResult | None = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.result = self.measure(trainer, pl_module)
        metrics = self.result.metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.result.step)
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and self.artifact_file:
            summary = json.dumps(self.result.summary(), indent=1, allow_nan=True)
            logger.experiment.log_text(logger.run_id, summary, self.artifact_file)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> BenchmarkResult:
        """Time the net (and its fused copy) and compare their outputs; log nothing."""
        net = LayerDiagnostics.network(pl_module)
        loader = first_test_loader(trainer)
        threads = self.num_threads or torch.get_num_threads()
        precision = trainer.precision_plugin
        with eval_mode(net):
            x = timing_batch(model_inputs(trainer, pl_module, loader), self.batch_size)
            nets = {"unfused": net}
            agreement = None
            if self.fused and callable(getattr(net, "reparameterize", None)):
                nets["fused"] = fused_copy(net)
                limit = trainer.num_test_batches[0] if trainer.num_test_batches else None
                limit = int(limit) if limit is not None and math.isfinite(limit) else None
                agreement = Agreement()
                with torch.inference_mode(), precision.test_step_context():
                    for batch in model_inputs(trainer, pl_module, loader, limit):
                        agreement.update(net(batch), nets["fused"](batch))
            with precision.test_step_context():
                timings = time_alternating(nets, x, self.min_run_time, self.rounds, threads)
        return BenchmarkResult(
            step=trainer.global_step,
            device=str(x.device),
            threads=threads,
            batch_shape=list(x.shape),
            dtype=str(x.dtype).removeprefix("torch."),
            unfused=timings["unfused"],
            fused=timings.get("fused"),
            agreement=agreement,
            params={name: sum(p.numel() for p in m.parameters()) for name, m in nets.items()},
        )


def first_test_loader(trainer: pl.Trainer) -> Iterable[Any]:
    """The trainer's (first) test loader."""
    loaders = trainer.test_dataloaders
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise RuntimeError("InferenceBenchmark runs after trainer.test: no test loader found")
    return loaders


def model_inputs(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loader: Iterable[Any],
    limit: int | None = None,
) -> Iterator[Tensor]:
    """The inputs of the first ``limit`` test batches as the test step receives them.

    The same three calls as Lightning's evaluation loop (``_evaluation_step``): the precision
    plugin's input conversion, ``on_before_batch_transfer``, then the strategy's transfer, which
    runs ``on_after_batch_transfer`` — where ablab's data modules standardise.
    """
    for batch in itertools.islice(loader, limit):
        batch = trainer.precision_plugin.convert_input(batch)
        batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
        batch = trainer.strategy.batch_to_device(batch, pl_module.device, dataloader_idx=0)
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def timing_batch(inputs: Iterable[Tensor], size: int) -> Tensor:
    """The first ``size`` inputs, concatenated across batches; a test set smaller than ``size``
    is repeated, so the timed batch always has ``size`` images (comparable throughput)."""
    parts, count = [], 0
    for x in inputs:
        parts.append(x)
        count += len(x)
        if count >= size:
            break
    if not parts:
        raise RuntimeError("InferenceBenchmark: the test loader yielded no batch")
    x = torch.cat(parts)
    if len(x) < size:
        x = x.repeat(math.ceil(size / len(x)), *([1] * (x.dim() - 1)))
    return x[:size].contiguous()


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """``net`` in eval mode; every submodule's training flag restored afterwards."""
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def fused_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net``, in eval mode, with ``reparameterize()`` applied; ``net`` untouched."""
    # Under inference mode (the test loop's) a copy would hold inference tensors.
    with torch.inference_mode(False), torch.no_grad():
        fused = copy.deepcopy(net).eval()
        fused.reparameterize()
    # deepcopy drops an in-place torch.compile (nn.Module.compile): compile the copy too, or an
    # eager fused net would be timed against the compiled one.
    if getattr(net, "_compiled_call_impl", None) is not None:
        fused.compile()
    return fused


def device_clock(device: torch.device) -> Callable[[], float]:
    """The clock ``Timer`` reads: wall time, after waiting for ``device``'s queued kernels.

    Not torch's default clock, which asks ``torch.accelerator.is_available()`` at every read: in a
    Lightning process (``PYTORCH_NVML_BASED_CUDA_CHECK=1``) on a GPU-less host that probes NVML
    (~0.2 ms a read, measured), and ``blocked_autorange`` then picks blocks of 100 forwards to
    hide that overhead — ten-second blocks and as long a warm-up per round.
    """
    if device.type == "cpu":
        return timeit.default_timer

    def clock() -> float:
        torch.accelerator.synchronize(device)
        return timeit.default_timer()

    return clock


def time_alternating(
    nets: Mapping[str, nn.Module],
    x: Tensor,
    min_run_time: float,
    rounds: int,
    threads: int,
    *,
    stmt: str = "net(x)",
    inference: bool = True,
) -> dict[str, Timing]:
    """``Timer.blocked_autorange`` of each net's ``stmt`` (``net(x)``) under inference mode (or,
    ``inference=False``, with autograd on: a training step), in ``rounds`` alternating blocks
    (the order reversed every round), replicates merged per net (``Timing.replicates`` keeps
    each round's)."""
    timers = {
        name: Timer(
            stmt,
            globals={"net": net, "x": x},
            label="inference" if inference else "train step",
            sub_label=name,
            description=f"batch {tuple(x.shape)}",
            num_threads=threads,
            timer=device_clock(x.device),
        )
        for name, net in nets.items()
    }
    replicates: dict[str, list[Measurement]] = {name: [] for name in nets}
    order = list(nets)
    with torch.inference_mode(inference), torch.set_grad_enabled(not inference):
        for i in range(rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                replicates[name].append(
                    timers[name].blocked_autorange(min_run_time=min_run_time / rounds)
                )
    return {name: Timing(ms, batch_size=len(x)) for name, ms in replicates.items()}
