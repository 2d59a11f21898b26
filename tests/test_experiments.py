"""Paper recipes as experiment configs: every value the paper states, and a real tiny run.

He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2 (CIFAR-10):
``experiment=cifar10_resnet_he2016`` and ``experiment=cifar10_resnet110_he2016``.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from tests.data.formats import make_cifar10
from torch import nn

from ablab.config import check_overrides, resolved
from ablab.init import initialize
from ablab.training.lifecycle import train
from ablab.training.types import check_types
from conftest import tracking_uri
from test_train import only_run

HE2016 = "experiment=cifar10_resnet_he2016"
HE2016_110 = "experiment=cifar10_resnet110_he2016"


def test_he2016_recipe_is_the_papers(compose_cfg) -> None:
    check_overrides([HE2016])
    with compose_cfg(HE2016) as cfg:
        check_types(cfg)
        config = resolved(cfg)
        net = initialize(instantiate(cfg.model), **cfg.init)
        task = instantiate(cfg.task, net=net, optimizer=instantiate(cfg.optimizer),
                           scheduler=None, loss=instantiate(cfg.loss))  # fmt: skip
        augment = instantiate(cfg.augmentation)
    assert cfg.hydra.runtime.choices.model == "resnet20"
    assert config["experiment_name"] == "cifar10_resnet_he2016"
    # "a weight decay of 0.0001 and momentum of 0.9", "we start with a learning rate of 0.1"
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9,
           "nesterov": False, "weight_decay": 0.0001}  # fmt: skip
    assert config["optimizer"] == sgd
    # ... on every weight: one parameter group, BN's γ and β included
    [group] = task.configure_optimizers().param_groups
    assert group["weight_decay"] == 0.0001 and len(group["params"]) == len(list(net.parameters()))
    # "divide it by 10 at 32k and 48k iterations, and terminate training at 64k iterations"
    sched = config["scheduler"]
    assert sched["interval"] == "step"
    assert sched["scheduler"]["milestones"] == [32000, 48000]
    assert (sched["scheduler"]["gamma"], sched["scheduler"]["warmup_steps"]) == (0.1, 0)
    trainer = config["trainer"]
    assert (trainer["max_steps"], trainer["max_epochs"]) == (64000, -1)
    # validated on the final weights: the last validation falls on step 64,000 ...
    assert trainer["check_val_every_n_epoch"] is None
    assert 64000 % trainer["val_check_interval"] == 0
    # ... and those weights are the ones tested (no best-checkpoint selection)
    assert config["callbacks"]["model_checkpoint"]["monitor"] is None
    # "a mini-batch size of 128", "per-pixel mean subtracted", 45k/5k train/val split
    data = config["data"]
    expected = {"dataset": "cifar10", "num_classes": 10, "in_channels": 3, "image_size": 32,
                "batch_size": 128, "normalize": "per_pixel_mean", "imbalance_ratio": 1.0}  # fmt: skip
    assert {k: data[k] for k in expected} == expected
    labels = torch.arange(50000) % 10  # CIFAR-10's training set: 5,000 images per class
    dm = instantiate(cfg.data)
    (_, y_train), (_, y_val) = dm.stratified_split(torch.zeros(50000, 1), labels, dm.val_fraction)
    assert (len(y_train), len(y_val)) == (45000, 5000)
    assert torch.bincount(y_val).tolist() == [500] * 10
    # "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded
    # image or its horizontal flip"; nothing else
    assert set(augment.ops) == {"crop", "hflip"} and augment.mix is None
    crop, flip = augment.ops["crop"], augment.ops["hflip"]
    assert isinstance(crop, K.RandomCrop) and isinstance(flip, K.RandomHorizontalFlip)
    ops = config["augmentation"]["ops"]
    assert (ops["crop"]["padding"], ops["crop"]["size"], flip.p) == (4, [32, 32], 0.5)
    # "the weight initialization in [13]": He et al. 2015, std √(2 / (k²·c_in))
    init = {"scheme": "kaiming_normal", "mode": "fan_in", "nonlinearity": "relu", "a": 0.0,
            "zero_init_last": False}  # fmt: skip
    assert config["init"] == init
    w = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    assert w.shape == (64, 64, 3, 3)  # the last block's second conv: fan_in 576
    assert w.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    # the 20-layer net of Table 6: 0.27M parameters, option A (parameter-free) shortcuts
    assert cfg.model.depths == [3, 3, 3] and cfg.model.widths == [16, 32, 64]
    assert cfg.model.shortcut == "identity_pad"
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == 0.27


def test_he2016_resnet110_recipe_adds_only_the_warmup(compose_cfg) -> None:
    with compose_cfg(HE2016) as cfg:
        base = resolved(cfg)
    with compose_cfg(HE2016_110) as cfg:
        deep = resolved(cfg)
        assert cfg.hydra.runtime.choices.model == "resnet110"
    assert deep["model"]["depths"] == [18, 18, 18]  # 6n + 2 = 110
    # "we use 0.01 to warm up the training ... (about 400 iterations), and then go back to 0.1"
    assert deep["scheduler"]["scheduler"]["warmup_steps"] == 400
    lr = deep["optimizer"]["lr"]
    assert deep["scheduler"]["scheduler"]["warmup_factor"] * lr == pytest.approx(0.01)
    changed = {k for k in base if base[k] != deep[k]}
    assert changed == {"experiment_name", "model", "scheduler", "logger"}
    base["scheduler"]["scheduler"]["warmup_steps"] = 400
    assert base["scheduler"] == deep["scheduler"]
    with compose_cfg(HE2016_110, "model=plain110") as cfg:
        assert cfg.model.shortcut == "none" and cfg.scheduler.scheduler.warmup_steps == 400


def test_he2016_recipe_trains_on_fabricated_cifar10(compose_cfg, root) -> None:
    # The real recipe on real CIFAR-10 files (fabricated, 100 training images): 4 steps of 8
    # images, validated at steps 2 and 4, milestones at steps 2 and 3, one warm-up step.
    make_cifar10(root / "data", per_batch=20)
    overrides = [
        HE2016,
        "data.verify_checksums=false",
        "data.batch_size=8",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "trainer.system_metrics_interval=null",
        "scheduler.scheduler.milestones=[2,3]",
        "scheduler.scheduler.warmup_steps=1",
        "callbacks.batch_preview=null",
        "callbacks.progress_bar=null",
    ]
    with compose_cfg(*overrides) as cfg:
        metrics = train(cfg)
    run = only_run(root)
    client = MlflowClient(tracking_uri(root))

    def history(key: str) -> list[float]:
        found = client.get_metric_history(run.info.run_id, key)
        return [m.value for m in sorted(found, key=lambda m: m.step)]

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resnet20-cifar10-s0"
    assert run.data.params["data.normalize"] == "per_pixel_mean"
    [lr_key] = [k for k in run.data.metrics if k.startswith("lr-SGD")]
    assert history(lr_key) == pytest.approx([0.01, 0.1, 0.01, 0.001])
    losses = history("train/loss_step")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert len(history("val/acc")) == 2  # the second on the final weights
    assert 0.0 <= metrics["test/acc"] <= 1.0
