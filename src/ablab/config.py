"""Where the Hydra configs live, ablab's OmegaConf resolvers, and composition with one-line errors.

Everything here imports only Hydra and OmegaConf, so a bad command line fails in about a second,
before torch is imported and before any MLflow run exists.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

from ablab.errors import ConfigError, unknown_choice

#: ``conf/`` at the top of the checkout (src layout: src/ablab/config.py -> ../../conf);
#: ``ABLAB_CONFIG_DIR`` points elsewhere, e.g. in a non-editable install.
CONFIG_DIR = Path(
    os.environ.get("ABLAB_CONFIG_DIR", Path(__file__).resolve().parents[2] / "conf")
).resolve()
CONFIG_NAME = "train"


def _local_artifact_root(tracking_uri: str, path: str) -> str | None:
    """``path`` unless a tracking server stores the artifacts (``None`` lets it choose).

    A database URI without a server (sqlite, postgresql, mysql) has no artifact store of its
    own: MLflow would fall back to a relative ``./mlruns``.
    """
    served = tracking_uri.startswith(("http://", "https://", "databricks"))
    return None if served else path


#: Override keys that do not change what a job computes, so not where it lives (see job_key).
JOB_KEY_IGNORED = ("paths.", "logger.", "resume", "trainer.system_metrics_interval")


def job_key(overrides: Sequence[str]) -> str:
    """The folder name of a single run: its command-line overrides, sorted, ``,``-joined.

    The same command (in any override order) gives the same folder, which is what lets a rerun
    find the run's ``last.ckpt`` and MLflow run id and continue it. Overrides of where things are
    written (``paths.*``, ``logger.*``) are left out; a long or path-unsafe key becomes a hash.
    """
    kept = sorted(o for o in overrides if not o.lstrip("+~").startswith(JOB_KEY_IGNORED))
    key = ",".join(kept) or "default"
    if len(key) > 120 or any(c in key for c in "/\\\0\n\"'*?$`"):
        return "h" + hashlib.sha1(key.encode()).hexdigest()[:12]
    return key


def register_resolvers() -> None:
    """Register ablab's resolvers once: ``${abspath:p}``, ``${local_artifacts:uri,path}``,
        ``${job_key:overrides}``, ``${slurm_gpus:accelerator,devices}`` (GPUs a SLURM job asks for)
        ``${optuna_direction:mode}`` (a task's max/min as Optuna's maximize/minimize) and
        ``${pick:key,{a: x, b: y}}`` (the entry of a table a choice selects: a task's monitored metric
        by the data's target kind) and ``${sum:a,b,...}`` (a size made of others: the recall
        problem's features, its symbols and the query flag) and ``${first_chosen:a,b,...}`` (the first
    of several group choices that is set: a run is named after its model, or a GAN's generator)."""
    resolvers = {
        "abspath": lambda p: str(Path(p).expanduser().resolve()),
        "local_artifacts": _local_artifact_root,
        "job_key": lambda overrides: job_key(list(overrides)),
        "slurm_gpus": lambda accelerator, devices: None if accelerator == "cpu" else devices,
        "optuna_direction": lambda mode: {"max": "maximize", "min": "minimize"}.get(mode, mode),
        "pick": _pick,
        "sum": lambda *terms: sum(terms),
        "first_chosen": lambda *choices: next(
            (c for c in choices if c is not None and str(c) != "None"), None
        ),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _pick(key: str, table: Any) -> Any:
    """``table[key]``; an unknown key names the valid ones."""
    try:
        return table[key]
    except KeyError:
        raise ConfigError(f"'{key}' is not one of: {', '.join(map(str, table))}") from None


register_resolvers()


@contextmanager
def composed(overrides: Sequence[str] = (), output_dir: str | None = None) -> Iterator[DictConfig]:
    """Compose ``train.yaml`` with ``overrides`` outside ``@hydra.main`` (tests, sub-commands).

    The Hydra runtime is set as in a real run, so ``${hydra:...}`` interpolations resolve;
    ``output_dir`` stands in for the run directory Hydra would create.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = _compose(list(overrides))
            with _hydra_runtime(cfg, output_dir):
                yield cfg
    finally:
        GlobalHydra.instance().clear()


@contextmanager
def _hydra_runtime(cfg: DictConfig, output_dir: str | None) -> Iterator[None]:
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.runtime.output_dir = output_dir or str(Path.cwd())
    cfg.hydra.job.num = 0
    OmegaConf.set_struct(cfg, True)
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


def _compose(overrides: list[str]) -> DictConfig:
    overrides = null_groups(overrides)
    try:
        return compose(CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        raise _missing_option_error(err) from None
    except HydraException as err:
        match = re.search(r"Could not override '([^']+)'", str(err))
        if match:
            raise _unknown_key_error(match.group(1), overrides) from None
        raise ConfigError(_one_line(err)) from None
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None


def _missing_option_error(err: MissingConfigException) -> ConfigError:
    missing = err.missing_cfg_file or ""
    group, _, value = missing.rpartition("/")
    if err.options is not None and group:
        return unknown_choice(f"{group} option", value, err.options)
    return ConfigError(_one_line(err))


def _unknown_key_error(key: str, overrides: list[str]) -> ConfigError:
    """Name the unknown key, the closest existing one and its siblings."""
    others = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
    parent_key = key.rpartition(".")[0]
    try:
        cfg = compose(CONFIG_NAME, overrides=others)
        node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    except Exception:
        node = None
    if isinstance(node, DictConfig):
        keys = [
            f"{parent_key}.{k}" if parent_key else str(k)
            for k in node
            if not str(k).startswith("_")
        ]
        err = unknown_choice("key", key, keys)
        return ConfigError(f"{err}; add a new key with +{key}=...")
    return ConfigError(f"unknown key '{key}'; add a new key with +{key}=...")


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


def resolved(cfg: DictConfig) -> dict:
    """The job config (``hydra`` node left out) fully resolved; missing values are errors."""
    try:
        body = {k: cfg[k] for k in cfg if k != "hydra"}
        return OmegaConf.to_container(OmegaConf.create(body), resolve=True, throw_on_missing=True)
    except InterpolationKeyError as err:
        raise _mismatch_error(cfg, err) or ConfigError(_one_line(err)) from None
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None


def _mismatch_error(cfg: DictConfig, err: InterpolationKeyError) -> ConfigError | None:
    """A group option reading a key another group's option does not declare (an image model's
    ``${data.in_channels}`` on sequence data): both options named, as a mismatch of the two,
    instead of OmegaConf's "Interpolation key not found"."""
    wanted = re.search(r"Interpolation key '(\w+)\.([\w.]+)' not found", str(err))
    reader = str(err.full_key or "").split(".")[0]
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    if not wanted or wanted[1] == reader or wanted[1] not in choices or reader not in choices:
        return None
    group = wanted[1]
    return ConfigError(
        f"{reader}={choices[reader]} reads {group}.{wanted[2]}, which {group}={choices[group]} "
        f"does not declare: the two do not fit together (e.g. an image model on sequence data); "
        f"choose a {reader} option made for {group}={choices[group]}"
    )


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """The fixed overrides, then one list per value of each swept key (linear, not the product)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [fixed]
    for o in parsed:
        # Interval sweeps (optimisers) have no values to list; glob sweeps need Hydra's loader.
        if o.is_sweep_override() and not o.is_interval_sweep() and not isinstance(o.value(), Glob):
            key = o.get_key_element()
            variants += [[*fixed, f"{key}={v}"] for v in o.sweep_string_iterator()]
    return variants


#: Config groups a run can do without (``group=null``): tracking, a task's unused groups, and
#: the groups that are off by default.
OPTIONAL_GROUPS = ("logger", "augmentation", "loss", "scheduler", "experiment", "hparams_search",
                   "debug")  # fmt: skip


def null_groups(overrides: Sequence[str]) -> list[str]:
    """``group=null`` (e.g. ``logger=null``: a run that tracks nothing) as Hydra's ``~group``,
    which drops the group; Hydra itself refuses null as a group option. A group every run needs
    is refused in one line."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+")
        if sep and value == "null" and group and (CONFIG_DIR / group).is_dir():
            if group not in OPTIONAL_GROUPS:
                raise ConfigError(
                    f"{override}: every run needs a {group}; groups that can be null: "
                    f"{', '.join(OPTIONAL_GROUPS)}"
                )
            override = f"~{group}"
        out.append(override)
    return out


def check_overrides(overrides: Sequence[str], multirun: bool = False) -> None:
    """Compose and resolve the config for ``overrides`` (every sweep value when ``multirun``).

    Raises :class:`ConfigError` with a one-line message on an unknown group option, an unknown
    key or an unresolvable value.
    """
    try:
        variants = sweep_variants(overrides) if multirun else [list(overrides)]
    except HydraException as err:
        raise ConfigError(_one_line(err)) from None
    for variant in variants:
        with composed(variant) as cfg:
            config = resolved(cfg)
            check_top_level_types(config)
            check_names(config)
            if multirun:
                check_processes_per_job(cfg)
                if OmegaConf.select(cfg, "logger._target_") is None:
                    raise ConfigError(
                        "logger=null tracks nothing, and a sweep's jobs, parent run and reports "
                        "live in MLflow; use logger=null for single runs"
                    )


def check_top_level_types(config: dict) -> None:
    """Raise ConfigError for a top-level key without a ``_target_`` (``seed``, ``seeds.*``,
    ``resume``, ...) whose resolved value does not have the type of its default in train.yaml
    (an int also passes for a float; keys that default to null take anything)."""
    body = OmegaConf.create(config)
    for key, default in _top_level_defaults().items():
        value = OmegaConf.select(body, key, default=None)
        expected = type(default)
        ok = type(value) is expected or (expected is float and type(value) is int)
        if value is not None and not ok:
            shown = str(default).lower() if isinstance(default, bool) else default
            raise ConfigError(
                f"{key}={value}: expected {expected.__name__} (its default in {CONFIG_NAME}.yaml "
                f"is {shown})"
            )


def _top_level_defaults() -> dict[str, bool | int | float | str]:
    """``key.path -> default`` for every non-null scalar of train.yaml, resolved."""
    body = OmegaConf.load(CONFIG_DIR / f"{CONFIG_NAME}.yaml")
    body.pop("defaults", None)
    flat: dict[str, bool | int | float | str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, bool | int | float | str):
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(body, resolve=True), "")
    return flat


#: MLflow's limits (``mlflow.utils.validation``, not imported here: it takes ~2 s to import):
#: an experiment name (longer fails), a tag key, a tag value (longer is cut, with a warning).
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000


def check_names(config: dict) -> None:
    """Raise ConfigError for an experiment name, run name or tag MLflow would refuse or cut."""
    logger = config.get("logger") or {}
    names = [("experiment_name", config.get("experiment_name"), MAX_EXPERIMENT_NAME_LENGTH)]
    names += [("logger.experiment_name", logger.get("experiment_name"), MAX_EXPERIMENT_NAME_LENGTH)]
    names += [("logger.run_name", logger.get("run_name"), MAX_TAG_VALUE_LENGTH)]  # a tag in MLflow
    for key, value in (logger.get("tags") or {}).items():
        names += [("a logger.tags key", key, MAX_TAG_KEY_LENGTH)]
        names += [(f"logger.tags.{key}", value, MAX_TAG_VALUE_LENGTH)]
    for key, value, limit in names:
        if value is not None and len(str(value)) > limit:
            raise ConfigError(
                f"{key} is {len(str(value))} characters long; MLflow allows at most {limit}"
            )


#: Strategies whose launcher re-runs the command line for ranks 1..N-1.
RELAUNCHING = ("ddp", "auto", "ddp_find_unused_parameters_true")


def check_processes_per_job(cfg: DictConfig) -> None:
    """Refuse, before the sweep starts, a job that would start its DDP ranks by re-running the
    command line: under ``-m`` that command is the whole sweep (a known Hydra + Lightning trap).

    With the SLURM launcher SLURM starts one task per device, so nothing is re-run; ``ddp_spawn``
    forks instead of re-running, and one process per job needs neither.
    """
    trainer = cfg.trainer
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or nodes > 1
    many = many or (not isinstance(devices, int | str) and len(devices) > 1)
    launcher = str(cfg.hydra.launcher.get("_target_", ""))
    if many and str(trainer.strategy) in RELAUNCHING and "submitit" not in launcher:
        raise ConfigError(
            f"trainer.strategy={trainer.strategy} with trainer.devices={devices} would re-run the "
            "whole sweep in every process it starts; in a multirun use trainer.strategy=ddp_spawn, "
            "or hydra/launcher=slurm (one task per device)"
        )
