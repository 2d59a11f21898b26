"""Every option of every config group composes, mirrors its constructor, and instantiates."""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from ablab.config import resolved
from ablab.init import initialize
from ablab.training.run import RUNTIME_KEYS, build_trainer
from ablab.training.types import check_types
from conftest import CONF, run_module

GROUPS = [
    "data",
    "model",
    "generator",
    "discriminator",
    "optimizer",
    "scheduler",
    "init",
    "augmentation",
    "loss",
    "task",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
    "debug",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
#: The task each non-classifier option belongs to (a sequence dataset needs a sequence model and
#: task; an autoencoder the reconstruction task...): each is composed with the rest of its form's
#: FORMS entry.
FORM_OPTIONS = {
    ("data", "adding"): "sequence", ("data", "copy"): "sequence",
    ("data", "digits_rows"): "sequence", ("data", "mnist_rows"): "sequence",
    ("model", "rnn"): "sequence", ("model", "lstm"): "sequence",
    ("model", "lstm_peephole"): "sequence", ("model", "gru"): "sequence",
    ("task", "sequence"): "sequence", ("loss", "mse"): "sequence",
    ("model", "ae_mlp"): "reconstruction", ("model", "ae_conv"): "reconstruction",
    ("task", "reconstruction"): "reconstruction",
    ("model", "unet"): "segmentation", ("data", "shapes"): "segmentation",
    ("data", "mask_folder"): "segmentation", ("task", "segmentation"): "segmentation",
    ("generator", "dcgan"): "gan", ("discriminator", "dcgan"): "gan", ("task", "gan"): "gan",
    ("model", "fcos"): "detection", ("data", "shapes_det"): "detection",
    ("data", "coco_json"): "detection", ("task", "detection"): "detection",
    ("data", "densities"): "divergence", ("discriminator", "mlp"): "divergence",
    ("task", "divergence"): "divergence",
    ("task", "anchors"): "anchors", ("data", "box_sets"): "anchors",
}  # fmt: skip
FORMS = {
    "sequence": {"task": "sequence", "data": "adding", "model": "lstm"},
    "reconstruction": {"task": "reconstruction", "data": "digits", "model": "ae_conv"},
    "segmentation": {"task": "segmentation", "data": "shapes", "model": "unet"},
    "gan": {"task": "gan", "data": "digits", "generator": "dcgan", "discriminator": "dcgan"},
    "detection": {"task": "detection", "data": "shapes_det", "model": "fcos"},
    "divergence": {"task": "divergence", "data": "densities", "discriminator": "mlp"},
    "anchors": {"task": "anchors", "data": "box_sets"},
}


def form(group: str, option: str) -> str | None:
    """The task ``group=option`` belongs to; ``None``: the classifier's (the defaults)."""
    return FORM_OPTIONS.get((group, option))


def companions(group: str, option: str) -> list[str]:
    """The overrides ``group=option`` composes with: the other groups of its form."""
    kind = form(group, option)
    if kind is None:
        return []
    return [f"{g}={o}" for g, o in FORMS[kind].items() if g != group]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert list((CONF / group).glob("*.yaml")), f"conf/{group} has no options"


def _check_signature(node: DictConfig, where: str, own: tuple[str, ...] = ()) -> None:
    """Keys of a ``_target_`` node must be parameters of the target (configs mirror signatures),
    except ``own`` keys that ablab applies itself (the trainer group's compute switches)."""
    target = get_object(node._target_)
    params = inspect.signature(target).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in node:
        if not str(key).startswith("_") and key not in own and not takes_kwargs:
            assert key in params, f"{where}: '{key}' is not a parameter of {node._target_}"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group: str, option: str, compose_cfg) -> None:
    with compose_cfg(f"{group}={option}", *companions(group, option)) as cfg:
        config = resolved(cfg)  # every interpolation resolves, nothing is missing
        assert config["seed"] == cfg.seed
        check_types(cfg)  # every value has the type its constructor's signature asks for
        node = cfg.get(group) if group != "experiment" else None
        if isinstance(node, DictConfig) and "_target_" in node:
            own = RUNTIME_KEYS if group == "trainer" else ()
            _check_signature(node, f"{group}={option}", own)
        if group == "callbacks":
            for name, cb in cfg.callbacks.items():
                if cb is not None:
                    _check_signature(cb, f"callbacks.{name}")
                    assert instantiate(cb) is not None
        elif group == "trainer":
            if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
                pytest.skip("needs a GPU to instantiate (signature checked above)")
            trainer = build_trainer(cfg, logger=False, enable_progress_bar=False)
            assert trainer.max_epochs == cfg.trainer.max_epochs
        elif group == "data":
            kind = form(group, option)
            augmentation = {"augmentation": None} if "images" in cfg.data else {}
            dm = instantiate(cfg.data, **augmentation)
            if kind == "sequence":
                assert dm.example_input().shape[2] == cfg.data.input_size
            elif kind == "divergence":  # samples of two densities, no classes
                assert dm.example_input().shape == (2, cfg.discriminator.in_features)
            else:
                assert dm.num_classes == cfg.data.num_classes
        elif group in ("model", "init"):
            net = initialize(instantiate(cfg.model), **cfg.init)
            kind = form(group, option)
            if kind == "sequence":
                x = torch.rand(2, cfg.data.length, cfg.data.input_size)
                assert net(x).shape == (2, cfg.data.num_outputs)
            else:
                x = torch.rand(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
                expected = {
                    "reconstruction": x.shape,  # the input back
                    "segmentation": (2, cfg.data.num_classes, *x.shape[2:]),  # a score per pixel
                }.get(kind, (2, cfg.data.num_classes))
                if kind == "detection":  # a row per location: K class logits, l t r b, centerness
                    expected = (2, len(net.locations(*x.shape[2:])[0]), cfg.data.num_classes + 5)
                assert net(x).shape == expected
        elif group in ("generator", "discriminator"):
            net = initialize(instantiate(cfg[group]), **cfg.init)
            if form(group, option) == "divergence":  # one score per 1-D sample
                assert net(torch.randn(2, cfg.discriminator.in_features)).shape == (2,)
                return
            images = (2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
            if group == "generator":
                assert net(torch.randn(2, cfg.task.latent_size)).shape == images
            else:
                assert net(torch.rand(images)).shape == (2,)  # one score per image
        elif group in ("optimizer", "scheduler"):
            params = [torch.nn.Parameter(torch.zeros(3))]
            optimizer = instantiate(cfg.optimizer)(params)
            assert isinstance(optimizer, torch.optim.Optimizer)
            if cfg.scheduler is not None:
                sched = instantiate(cfg.scheduler, _convert_="all")
                assert sched["interval"] in ("epoch", "step")
                make = sched["scheduler"]
                if (
                    make.keywords.get("total_steps", 0) is None
                ):  # the task fills it from the trainer
                    make = partial(make, total_steps=10)
                scheduler = make(optimizer)
                optimizer.step()
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(1.0)  # the monitored metric
                else:
                    scheduler.step()
        elif group in ("augmentation", "loss"):
            module = instantiate(cfg[group])
            if isinstance(module, partial):  # a loss built from the training split's class counts
                module = module(class_counts=torch.ones(cfg.data.num_classes))
            assert isinstance(module, torch.nn.Module)
        elif group == "logger":
            logger = instantiate(cfg.logger)
            assert logger._tracking_uri.startswith("sqlite:///")
            assert logger._initialized is False  # building a logger creates no run
        elif group == "task" and option == "sequence":
            assert cfg.task.num_outputs == cfg.data.num_outputs == 1
            assert (cfg.task.monitor, cfg.task.mode) == ("val/mse", "min")  # adding's values
        elif group == "task" and form(group, option) is None:
            assert cfg.task.num_classes == cfg.data.num_classes


def test_train_eval_is_off_by_default_and_one_override(compose_cfg) -> None:
    """The clean training set is scored only when asked: by default validation is one loader,
    exactly as before; ``data.train_eval=true`` adds the named second one on every data option."""
    with compose_cfg() as cfg:
        assert cfg.data.train_eval is False and cfg.data.train_eval_limit is None
        assert not isinstance(instantiate(cfg.data).val_dataloader(), dict)
    with compose_cfg("data.train_eval=true") as cfg:
        assert list(instantiate(cfg.data).val_dataloader()) == ["val", "train_eval"]
    for option in sorted(p.stem for p in (CONF / "data").glob("*.yaml")):
        others = companions("data", option)
        with compose_cfg(f"data={option}", "data.train_eval=true", *others) as cfg:
            check_types(cfg)
            assert cfg.data.train_eval is True


def test_name_limits_are_mlflows() -> None:
    from mlflow.utils import validation

    from ablab import config

    assert config.MAX_EXPERIMENT_NAME_LENGTH == validation.MAX_EXPERIMENT_NAME_LENGTH
    assert config.MAX_TAG_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH
    assert config.MAX_TAG_VALUE_LENGTH == validation.MAX_TAG_VAL_LENGTH


def test_class_count_and_shape_flow_from_data(compose_cfg) -> None:
    with compose_cfg("data=cifar100") as cfg:
        assert cfg.model.num_classes == 100 == cfg.task.num_classes
        assert cfg.model.in_channels == 3
    with compose_cfg("data=synthetic", "data.num_classes=4", "data.in_channels=3") as cfg:
        assert (cfg.model.num_classes, cfg.model.in_channels, cfg.task.num_classes) == (4, 3, 4)


def test_tracking_uri_from_environment(compose_cfg, monkeypatch, tmp_path) -> None:
    with compose_cfg() as cfg:
        assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
        assert cfg.logger.artifact_location == f"{tmp_path}/mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with compose_cfg() as cfg:
        assert cfg.logger.tracking_uri == "http://127.0.0.1:5999"
        assert cfg.logger.artifact_location is None  # the server decides where artifacts go
    with compose_cfg("logger.tracking_uri=sqlite:////elsewhere/m.db") as cfg:
        assert cfg.logger.tracking_uri == "sqlite:////elsewhere/m.db"


def test_cfg_job_resolve_prints_composed_config(root) -> None:
    proc = run_module(["ablab.train", "--cfg", "job", "--resolve", "model.act=relu"], root)
    assert proc.returncode == 0, proc.stderr
    printed = OmegaConf.create(proc.stdout)
    assert printed.model.act == "relu"
    assert printed.model.num_classes == printed.data.num_classes == 10
    assert printed.logger.tracking_uri == f"sqlite:///{root}/mlflow.db"
