"""The parts of a run: every component built and validated from the composed config, the config
logged to the run, and the summary printed at its end. The run's life is
:mod:`ablab.training.lifecycle`.

All building and validation happens before the MLflow run is created, so bad input leaves no
half-written run behind.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from mlflow.entities import Param
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from rich.console import Console
from torch import Tensor, nn

from ablab.complexity import Complexity, measure
from ablab.config import resolved
from ablab.data.module import DataModule
from ablab.errors import ConfigError
from ablab.init import initialize
from ablab.tasks.base import Task
from ablab.tracking import flatten_params
from ablab.tracking.store import ensure_store
from ablab.training.callbacks import FlushMetrics, MonitorBest, Plateau, StopReason, TestedWeights
from ablab.training.cuda_probe import skip_nvml_probe_without_driver
from ablab.training.precision import warn_emulated_bf16
from ablab.training.threads import ThreadBudget, apply_threads
from ablab.training.types import check_types

# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

LAST_CHECKPOINT = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
#: Keys of the ``trainer`` group that ablab applies itself; all others are ``pl.Trainer`` arguments.
RUNTIME_KEYS = ("compile", "channels_last", "system_metrics_interval", "threads")


@dataclass
class Run:
    """The parts of one training run; ``logger`` is ``None`` when nothing is tracked
    (``logger=null``)."""

    datamodule: DataModule
    task: Task
    trainer: pl.Trainer
    logger: MLFlowLogger | None
    #: network name -> its size, traced on the data's example input
    complexity: dict[str, Complexity]
    #: the best value of the task's monitored metric, whatever the checkpointing
    monitor_best: MonitorBest
    #: torch threads this process trains with, and why (:mod:`ablab.training.threads`)
    threads: ThreadBudget
    #: which weights ``trainer.test`` scored (tagged on the run as ``tested_weights``)
    tested: TestedWeights


def refuse_automatic_only(trainer: Any, task: str) -> None:
    """What a task that steps its own optimizers (a GAN, Lightning's manual optimization) cannot
    have, refused before the run exists instead of failing at fit start after it: gradient
    clipping and accumulation (automatic optimization's); ``max_steps``, which then counts every
    optimizer's steps; DDP that expects every parameter to get a gradient in every backward (the
    discriminator's step leaves the generator's without one)."""
    clip = trainer.get("gradient_clip_val")
    accumulate = trainer.get("accumulate_grad_batches") or 1
    if clip or accumulate > 1:
        raise ConfigError(
            f"{task} steps its own optimizers (manual optimization): trainer.gradient_clip_val="
            f"{clip} and trainer.accumulate_grad_batches={accumulate} are not available with it; "
            "use trainer.gradient_clip_val=null trainer.accumulate_grad_batches=1"
        )
    max_steps = trainer.get("max_steps")
    if max_steps not in (None, -1):
        raise ConfigError(
            f"{task} steps several optimizers per batch: trainer.max_steps={max_steps} would "
            "count each of their steps; use trainer.max_epochs"
        )
    strategy = ddp_strategy(trainer)
    if strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        raise ConfigError(
            f"{task} trains its networks in turn, so some parameters get no gradient in a "
            f"backward: {describe_strategy(trainer, strategy)} expects every one to; use "
            f"trainer.strategy={strategy}_find_unused_parameters_true"
        )


#: Lightning's device parsing per accelerator name, for the ones ablab runs on.
DEVICE_PARSERS = {"cpu": CPUAccelerator, "gpu": CUDAAccelerator, "cuda": CUDAAccelerator}


def ddp_strategy(trainer: Any) -> str | None:
    """The DDP strategy a trainer config runs, or None: a ``ddp*`` strategy by name, or ``ddp``
    when ``strategy=auto`` meets more than one device or node (Lightning then picks it itself)."""
    strategy = str(trainer.get("strategy"))
    if strategy.startswith("ddp"):
        return strategy
    if strategy != "auto":
        return None
    accelerator = str(trainer.get("accelerator"))
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    parser = DEVICE_PARSERS.get(accelerator)
    devices = trainer.get("devices")
    if parser is None:
        return None  # another accelerator: Lightning checks its own devices
    try:
        parsed = parser.auto_device_count() if devices == "auto" else parser.parse_devices(devices)
    except Exception:
        return None  # an invalid devices value: Lightning names it as the trainer is built
    count = len(parsed) if isinstance(parsed, list) else int(parsed or 0)
    return "ddp" if count * int(trainer.get("num_nodes") or 1) > 1 else None


def describe_strategy(trainer: Any, strategy: str) -> str:
    """``trainer.strategy=<name>``, or what made ``auto`` choose DDP."""
    if str(trainer.get("strategy")) == strategy:
        return f"trainer.strategy={strategy}"
    return (
        f"trainer.strategy=auto with trainer.devices={trainer.get('devices')} "
        f"trainer.num_nodes={trainer.get('num_nodes') or 1} (Lightning's {strategy})"
    )


def refuse_ddp_without_gradients(trainer: Any, task: str) -> None:
    """A task with no trainable parameter (k-means anchors) under DDP: torch's
    DistributedDataParallel refuses to wrap it, at fit start, after the run exists."""
    strategy = ddp_strategy(trainer)
    if strategy is not None:
        raise ConfigError(
            f"{task} has no trainable parameter, so {describe_strategy(trainer, strategy)} has "
            "no gradient to synchronise (torch's DDP refuses such a module); use trainer=cpu "
            "(one process)"
        )


#: Config groups a task may take a network from (``Task.networks``).
NETWORK_GROUPS = ("model", "generator", "discriminator")


def refuse_unused_networks(cfg: DictConfig, task_class: type[Task]) -> None:
    """A network group set that the task does not take (``model=`` with ``task=gan``) would be
    silently ignored, yet name the run and fill its params: refuse it in one line."""
    taken = set(task_class.networks.values())
    for group in NETWORK_GROUPS:
        if group not in taken and cfg.get(group) is not None:
            choice = cfg.hydra.runtime.choices.get(group) if "hydra" in cfg else None
            raise ConfigError(
                f"{group}={choice} is not used: {task_class.__name__} builds its networks from "
                f"{', '.join(sorted(taken))}; drop the {group} option"
            )


def build(cfg: DictConfig, run_id: str | None = None) -> Run:
    """Instantiate data, networks, init, task, callbacks, logger and trainer; raise ConfigError.

    The task and the data module declare what they are built from (``Task.networks``,
    ``Task.components``, ``DataModule.components``); nothing here depends on which task it is.
    ``run_id`` makes the logger continue that MLflow run instead of creating one.
    """
    refuse_unused_augmentation(cfg)  # before its image-size interpolations fail to resolve
    check_types(cfg)  # a wrong type names its key before anything is built
    threads = apply_threads(cfg)  # this process's share of the cores, before any network
    skip_nvml_probe_without_driver()  # a per-step NVML load attempt on GPU-less hosts
    pl.seed_everything(cfg.seed, workers=True)
    try:
        task_class = component_class(cfg, "task", Task)
        refuse_unused_networks(cfg, task_class)
        data_class = component_class(cfg, "data", DataModule)
        datamodule = instantiate(cfg.data, **components(cfg, data_class.components))
        datamodule.prepare_data()
        datamodule.setup("fit")  # loads and splits once (cached): data errors surface here
        # Weights draw from their own stream, so variants can share data order and augmentation.
        torch.manual_seed(cfg.seeds.init)
        networks = {
            argument: initialize(instantiate(cfg[group]), **cfg.init)
            for argument, group in task_class.networks.items()
        }
        scheduler_cfg = cfg.get("scheduler")
        scheduler = instantiate(scheduler_cfg, _convert_="all") if scheduler_cfg else None
        task = instantiate(
            cfg.task,
            **networks,
            **components(cfg, task_class.components),
            optimizer=instantiate(cfg.get("optimizer")),  # None: a task without one
            scheduler=scheduler,
        )
        if not task.automatic_optimization:
            refuse_automatic_only(cfg.trainer, task_class.__name__)
        if not any(p.requires_grad for p in task.parameters()):
            refuse_ddp_without_gradients(cfg.trainer, task_class.__name__)
        task.check(datamodule)  # whatever the task needs of the data, before any run exists
        # Traced on the data's own example: a network that cannot take it fails here. On the
        # eager networks: fx cannot trace a compiled one.
        complexity = {
            name: measure(networks[name], example)
            for name, example in task.example_inputs(datamodule).items()
        }
        for net in networks.values():
            apply_compute_switches(net, cfg.trainer.compile, cfg.trainer.channels_last)
        try:  # dry run: a bad optimizer or scheduler value fails here, not after the run starts
            task.configure_optimizers()
        except (ValueError, TypeError) as err:
            raise ConfigError(f"optimizer/scheduler rejected the config: {err}") from err
        monitor_best = MonitorBest(task.monitor, task.mode)
        named = {name: c for name, c in cfg.callbacks.items() if c is not None}
        callbacks = [instantiate(c) for c in named.values()]
        task.check_callbacks(dict(zip(named, callbacks, strict=True)))
        monitors: dict[str, str | None] = {}
        training: dict[str, str | None] = {}  # read at a training epoch's end (a plateau)
        for name, callback in zip(named, callbacks, strict=True):
            watched = training if isinstance(callback, Plateau) else monitors
            watched[f"callbacks.{name}.monitor"] = getattr(callback, "monitor", None)
        monitors["scheduler.monitor"] = (scheduler or {}).get("monitor")
        task.check_monitors(monitors, training)
        logger = None
        if is_tracked(cfg):
            # Lightning's MLFlowLogger opens its store as it is made: a new local store is
            # created and migrated here, once everything before it was valid, under its lock.
            uri = str(cfg.logger.tracking_uri)
            try:
                ensure_store(uri)
            except ConfigError as err:
                raise ConfigError(f"logger.tracking_uri={uri}: {err}") from None
            logger = instantiate(cfg.logger, run_id=run_id)
            callbacks.append(FlushMetrics(logger))  # where the metrics the logger holds are written
        else:  # logger=null: Lightning refuses a learning-rate monitor with nothing to log to
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        tested = TestedWeights()  # with StopReason: the run's record of how fit and test went
        trainer = build_trainer(
            cfg,
            callbacks=[monitor_best, StopReason(), tested, *callbacks],
            logger=logger if logger else False,
        )
        datamodule.rank_batch_size(trainer.world_size)  # data.batch_size is the global batch
    except ConfigError:
        raise
    except Exception as err:
        raise as_config_error(err) from err
    return Run(datamodule, task, trainer, logger, complexity, monitor_best, threads, tested)


def component_class(cfg: DictConfig, group: str, base: type) -> type:
    """The class ``cfg.<group>._target_`` names, which must be a ``base``."""
    target = OmegaConf.select(cfg, f"{group}._target_")
    try:
        cls = get_class(str(target))
    except Exception as err:
        raise ConfigError(f"{group}._target_={target} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"{group}._target_={target} is not a {base.__module__}.{base.__qualname__}; "
            f"the {group} group must name one"
        )
    return cls


def refuse_unused_augmentation(cfg: DictConfig) -> None:
    """Raise ConfigError when the augmentation group has ops or a mix and the data module does
    not take the group (sequences, images with masks): it would be ignored without a word."""
    data_class = component_class(cfg, "data", DataModule)
    if "augmentation" in data_class.components.values() or cfg.get("augmentation") is None:
        return
    # the keys only: their values interpolate data.image_size, which such data may not have
    ops = list(cfg.augmentation.get("ops") or {})
    if ops or cfg.augmentation.get("mix") is not None:  # a node: its values stay unresolved
        what = ", ".join(ops) or "mix"
        raise ConfigError(
            f"data._target_={cfg.data._target_} takes no augmentation, but the augmentation group "
            f"has {what}: use augmentation=none"
        )


def components(cfg: DictConfig, wanted: dict[str, str]) -> dict[str, Any]:
    """constructor argument -> the component its config group builds (a dropped group,
    ``group=null``, gives None)."""
    return {argument: instantiate(cfg.get(group)) for argument, group in wanted.items()}


def is_tracked(cfg: DictConfig) -> bool:
    """Whether the run is tracked: ``logger=null`` drops the group (a debug config may still
    leave a ``logger.tags`` node behind, with nothing to build)."""
    return OmegaConf.select(cfg, "logger._target_") is not None


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """``pl.Trainer`` from the ``trainer`` group minus ablab's own keys; refuse combinations that
    Lightning would silently change or that would re-run a sweep (see :func:`check_trainer`)."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in RUNTIME_KEYS:
        args.pop(key, None)
    trainer = instantiate(args, **kwargs)
    check_trainer(trainer, precision=str(args["precision"]), strategy=str(args["strategy"]))
    return trainer


def check_trainer(trainer: pl.Trainer, precision: str, strategy: str) -> None:
    """Raise ConfigError for fp16 autocast on CPU (Lightning would quietly train in bf16) and for
    a script-relaunching DDP strategy inside a multirun; warn about bf16 on a CPU that only
    emulates it (:func:`warn_emulated_bf16`).

    Lightning's ``ddp`` starts ranks 1..N-1 by running the command line again with
    ``hydra.run.dir`` pinned to this run's folder. In a single run that folder is shared and only
    rank 0 tracks; under ``-m`` the command line is the whole sweep, so every child would run it.
    """
    if precision in ("16", "16-mixed") and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            f"trainer.precision={precision} needs a GPU (fp16 autocast is not supported on CPU); "
            "on CPU use 32-true or bf16-mixed"
        )
    cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if cpu and precision.startswith("bf16") and trainer.is_global_zero:
        warn_emulated_bf16(precision)
    launcher = trainer.strategy.launcher
    relaunches = (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.strategy={strategy} with {launcher.num_processes} "
            "processes per job would re-run the whole sweep in every process it starts; in a "
            "multirun use trainer.strategy=ddp_spawn, or hydra/launcher=slurm (one task per device)"
        )


def apply_compute_switches(net: nn.Module, compiled: bool, channels_last: bool) -> nn.Module:
    """Channels-last weights and inputs, then ``torch.compile``, in place (checkpoint keys stay)."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(channels_last_input)
    if compiled:
        net.compile()
    return net


def channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: an (N, C, H, W) batch in channels-last memory format."""
    x, *rest = args
    if isinstance(x, Tensor) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def as_config_error(err: BaseException) -> ConfigError:
    """The ConfigError in ``err``'s cause chain, else ``err`` itself on one line."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConfigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError(" ".join(lines) or type(err).__name__)


def complexity_params(complexity: dict[str, Complexity]) -> dict[str, int]:
    """``complexity.params``/``complexity.macs`` for a one-network task, and its top-level parts'
    (``complexity.part.neck.macs``: what an FPN adds to a detector, beside the head it feeds);
    with several networks each one's (``complexity.generator.params``,
    ``complexity.generator.part.main.macs``...) and their sums."""
    params: dict[str, int] = {}
    for name, c in complexity.items():
        prefix = "complexity" if len(complexity) == 1 else f"complexity.{name}"
        params[f"{prefix}.params"], params[f"{prefix}.macs"] = c.params, c.macs
        for part, (n_params, macs) in c.parts.items():
            params[f"{prefix}.part.{part}.params"] = n_params
            params[f"{prefix}.part.{part}.macs"] = macs
    if len(complexity) != 1:  # several networks' sums; 0 for a task without one (anchors)
        params["complexity.params"] = sum(c.params for c in complexity.values())
        params["complexity.macs"] = sum(c.macs for c in complexity.values())
    return params


def log_run_config(run: Run, cfg: DictConfig) -> None:
    """Params (flattened resolved config, measured network sizes, what the data module measured,
    the torch thread budget), config/override/command artifacts and the data module's own, dir
    tag."""
    logger, client = run.logger, run.logger.experiment
    config = resolved(cfg)
    params = flatten_params(config) | complexity_params(run.complexity)
    params |= flatten_params(run.datamodule.run_params()) | run.threads.params()
    # Through the client, not logger.log_hyperparams: Lightning cuts every value at 250 characters.
    entries = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(logger.run_id, params=entries[start : start + 100])
    client.log_text(logger.run_id, yaml.safe_dump(config, sort_keys=False), "config/config.yaml")
    for path, text in run.datamodule.run_artifacts().items():
        client.log_text(logger.run_id, text, path)
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    client.log_text(logger.run_id, yaml.safe_dump(overrides), "config/overrides.yaml")
    client.log_text(logger.run_id, " ".join(sys.argv), "config/command.txt")
    client.set_tag(logger.run_id, "hydra_output_dir", hydra_cfg.runtime.output_dir)


def report(
    metrics: dict[str, Any],
    logger: MLFlowLogger | None,
    uri: str | None,
    status: str,
    checkpoint: str,
    tested: str | None = None,
) -> None:
    """The last lines of a run: test metrics, one line per namespace (``test/``, the same
    weights' ``tested_val/``..., best scores), which weights they are (``tested``), where the
    run is and how to open it."""
    console = Console(soft_wrap=True)  # long paths and URLs stay on one line
    # Per-class recalls (one per class, 100 on CIFAR-100) stay in MLflow, off the summary lines.
    summary = sorted((k, v) for k, v in metrics.items() if "/recall/" not in k)
    for i, (_, group) in enumerate(itertools.groupby(summary, key=lambda kv: kv[0].split("/")[0])):
        shown = "  ".join(f"{k}={v:.4f}" for k, v in group)
        console.print(f"{'[bold]test[/bold]' if i == 0 else '    '} {shown}", highlight=False)
    if tested:
        console.print(f"tested: {tested}", highlight=False, markup=False)
    if checkpoint:
        console.print(f"best checkpoint: {checkpoint}", highlight=False)
    if logger is None:
        console.print(f"{status}; nothing was tracked (logger=null)", highlight=False)
        return
    experiment = logger.experiment.get_experiment(logger.experiment_id).name
    console.print(
        f"MLflow run {logger.run_id} ({status}) in experiment '{experiment}' "
        f"(id {logger.experiment_id}) at {uri}",
        highlight=False,
        markup=False,
    )
    from ablab.tracking.dashboard import run_path

    path = run_path(logger.experiment_id, logger.run_id)
    if str(uri).startswith(("http://", "https://")):  # a tracking server serves its own UI
        console.print(f"open it: {str(uri).rstrip('/')}/{path}", highlight=False, markup=False)
    else:
        console.print(
            f"open it: mlflow ui --backend-store-uri {uri}  (or: make ui), then "
            f"http://127.0.0.1:5000/{path}",
            highlight=False,
            markup=False,
        )
