"""Optimizer, scheduler, loss and regularisation options: each composes, trains, and does what
its formula says; bad values are one-line errors before any run exists."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ablab.errors import ConfigError
from ablab.training.losses import balanced_cross_entropy, balanced_focal_loss, focal_loss
from ablab.training.run import build
from conftest import CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a sqlite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('components')}/mlflow.db"


FAST = [
    "trainer=smoke",
    "callbacks.batch_preview=null",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "logger.log_model=false",
    "experiment_name=components",
]


def fit(compose_cfg, store: str, *overrides: str):
    """Build from the real config and fit two training batches and the validation batches."""
    with compose_cfg(*FAST, f"logger.tracking_uri={store}", *overrides) as cfg:
        run = build(cfg)
        run.trainer.fit(run.task, datamodule=run.datamodule)
    return run


def assert_trained(run) -> None:
    assert run.trainer.global_step == 2
    assert torch.isfinite(run.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_trains(name, compose_cfg, store) -> None:
    assert_trained(fit(compose_cfg, store, f"optimizer={name}"))


@pytest.mark.parametrize("name", options("scheduler"))
def test_every_scheduler_trains(name, compose_cfg, store) -> None:
    run = fit(compose_cfg, store, f"scheduler={name}")
    assert_trained(run)
    assert any(k.startswith("lr-") for k in run.trainer.callback_metrics)


#: A small sequence task: the recurrent models, sequence data and value losses train on it.
ADDING = ["data=adding", "data.length=8", "data.n_train=256", "data.n_val=64", "data.n_test=64"]
SEQUENCE = ["task=sequence", "model=lstm", "model.hidden_size=8", *ADDING]
#: Losses for value targets (the sequence task's), the others for classes.
VALUE_LOSSES = {"mse"}


@pytest.mark.parametrize("name", options("loss"))
def test_every_loss_trains(name, compose_cfg, store) -> None:
    task = SEQUENCE if name in VALUE_LOSSES else ["data=synthetic"]
    assert_trained(fit(compose_cfg, store, f"loss={name}", *task))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=rnn"], ["model=rnn", "model.nonlinearity=relu"], ["model=lstm_peephole"],
        ["model=gru"], ["model=lstm", "model.backend=torch"], ["model=gru", "model.backend=torch"],
        ["model=lstm", "model.num_layers=2", "model.dropout=0.2", "model.bidirectional=true"],
        ["model=lstm", "model.bptt=3"], ["data.train_eval=true"], ["init=orthogonal"],
        ["data=copy", "data.num_classes=4", "data.input_size=5", "data.length=8"],
        ["data=copy", "data.length=8", "loss=balanced_cross_entropy"],
        ["data=digits_rows", "loss=balanced_focal"],
        ["data=digits_rows"], ["data=mnist_rows", "data.images.root=MNIST_ROOT"],
    ],
    ids=lambda o: " ".join(o),
)  # fmt: skip
def test_every_sequence_option_trains(overrides, compose_cfg, store, tmp_path) -> None:
    """Every sequence data, recurrent model and switch: a fast step through the real build."""
    from tests.data.formats import make_mnist

    make_mnist(tmp_path / "mnist", "MNIST", n_train=200, n_test=20)
    overrides = [o.replace("MNIST_ROOT", str(tmp_path / "mnist")) for o in overrides]
    base = (
        [o for o in SEQUENCE if o not in ADDING] if overrides[0].startswith("data=") else SEQUENCE
    )
    run = fit(compose_cfg, store, *base, *overrides)
    assert_trained(run)
    monitor = run.task.monitor
    assert torch.isfinite(run.trainer.callback_metrics[monitor]), monitor


@pytest.mark.parametrize("name", options("init"))
def test_every_init_trains(name, compose_cfg, store) -> None:
    assert_trained(fit(compose_cfg, store, f"init={name}"))


@pytest.mark.parametrize("name", options("augmentation"))
def test_every_augmentation_trains(name, compose_cfg, store) -> None:
    assert_trained(fit(compose_cfg, store, f"augmentation={name}", "data=synthetic",
                       "data.in_channels=3", "data.image_size=32"))  # fmt: skip


@pytest.mark.parametrize("name", options("callbacks"))
def test_every_callbacks_option_trains(name, compose_cfg, store) -> None:
    assert_trained(fit(compose_cfg, store, f"callbacks={name}"))


def test_gradient_clipping_and_l1_train(compose_cfg, store) -> None:
    run = fit(
        compose_cfg, store, "trainer.gradient_clip_val=0.5", "task.l1=1e-4", "model.dropout=0.3"
    )
    assert_trained(run)
    assert run.trainer.callback_metrics["train/l1_penalty"] > 0


def test_gradient_norm_is_the_one_clipping_acts_on(compose_cfg, store) -> None:
    """task=sequence logs ‖∂L/∂θ‖ before clipping: with a clip far below it, the logged norm is
    the unclipped one, and train/grad_norm_max is the largest of every step of the epoch."""
    seen: list[float] = []

    class Record(pl.Callback):  # after GradientNorm: the same gradients, before the clip
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            flat = torch.cat(
                [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
            )
            seen.append(torch.linalg.vector_norm(flat).item())

    overrides = [*FAST, f"logger.tracking_uri={store}", *SEQUENCE, "model=rnn",
                 "model.nonlinearity=relu", "trainer.gradient_clip_val=1e-4"]  # fmt: skip
    with compose_cfg(*overrides) as cfg:
        run = build(cfg)
        run.trainer.callbacks.append(Record())
        run.trainer.fit(run.task, datamodule=run.datamodule)
    metrics = run.trainer.callback_metrics
    assert len(seen) == 2 and min(seen) > 1e-2  # the clip (1e-4) did not reach what was read
    assert metrics["train/grad_norm_max"].item() == pytest.approx(max(seen), rel=1e-5)
    assert metrics["train/grad_norm"].item() == pytest.approx(seen[-1], rel=1e-5)


def test_onecycle_spans_the_runs_steps(compose_cfg, store) -> None:
    run = fit(compose_cfg, store, "scheduler=onecycle", "trainer.limit_train_batches=2")
    scheduler = run.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == run.trainer.estimated_stepping_batches == 2


def test_weight_decay_skips_norms_and_biases(compose_cfg) -> None:
    from hydra.utils import instantiate

    with compose_cfg("model=resnet20", "optimizer=sgd", "optimizer.weight_decay=0.1") as cfg:
        net = instantiate(cfg.model)
        task = instantiate(cfg.task, net=net, optimizer=instantiate(cfg.optimizer),
                           scheduler=None, loss=nn.CrossEntropyLoss())  # fmt: skip
        decayed, rest = task.configure_optimizers().param_groups
        assert decayed["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
        assert all(p.dim() > 1 for p in decayed["params"])
        norms = [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
        assert {id(p) for p in norms} <= {id(p) for p in rest["params"]}
        assert len(decayed["params"]) + len(rest["params"]) == len(list(net.parameters()))
        task.decay_norm_and_bias = True
        [group] = task.configure_optimizers().param_groups
        assert group["weight_decay"] == 0.1


def test_cosine_warmup_schedule() -> None:
    from ablab.training.schedulers import cosine_with_warmup

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_with_warmup(
        optimizer, max_epochs=10, warmup_epochs=2, warmup_start_factor=0.1
    )
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55)  # linear warm-up
    assert lrs[2] == pytest.approx(1.0)  # then a half cosine over the remaining 8 epochs
    assert lrs[6] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 8)).item()))


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    logits, y = torch.randn(32, 5), torch.randint(0, 5, (32,))
    ce = nn.functional.cross_entropy(logits, y)
    assert torch.allclose(focal_loss(gamma=0.0)(logits, y), ce, atol=1e-6)
    assert focal_loss(gamma=2.0)(logits, y) < ce  # easy examples are down-weighted
    p_t = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    alpha = torch.where(y == 0, 0.75, 0.25)  # kornia: 1 − α for class 0 (background), α others
    expected = (-alpha * (1 - p_t) ** 2 * p_t.log()).mean()
    assert torch.allclose(focal_loss(gamma=2.0, alpha=0.25)(logits, y), expected, atol=1e-6)


def test_balanced_focal_loss_separates_focusing_from_weighting() -> None:
    """At γ = 0 it is class-balanced CE; at γ = 2 each sample's focal term weighted by its
    class's N / (C · n_c), in the weighted mean."""
    counts = torch.tensor([90, 9, 1])
    logits, y = torch.randn(64, 3), torch.randint(0, 3, (64,))
    balanced = balanced_cross_entropy(counts)(logits, y)
    assert torch.allclose(balanced_focal_loss(counts, gamma=0.0)(logits, y), balanced, atol=1e-6)
    w = (counts.sum() / (3 * counts.float()))[y]
    p_t = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    expected = (w * -((1 - p_t) ** 2) * p_t.log()).sum() / w.sum()
    assert torch.allclose(balanced_focal_loss(counts)(logits, y), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="balanced focal loss: classes \\[1\\] have no"):
        balanced_focal_loss(torch.tensor([5, 0]))


def test_balanced_weights_equalise_class_totals() -> None:
    counts = torch.tensor([90, 9, 1])
    loss = balanced_cross_entropy(counts)
    assert torch.allclose(loss.weight * counts, torch.full((3,), 100 / 3))
    with pytest.raises(ConfigError, match="classes \\[1\\] have no training samples"):
        balanced_cross_entropy(torch.tensor([5, 0]))


def test_balanced_loss_counts_the_training_split(compose_cfg, store) -> None:
    run = fit(compose_cfg, store, "loss=balanced_cross_entropy", "data=synthetic",
              "data.imbalance=0.1")  # fmt: skip
    weight = run.task.loss_fn.weight
    assert weight[-1] > 2 * weight[0]  # the rarest class weighs most


def test_soft_targets_score_against_their_argmax(compose_cfg) -> None:
    from hydra.utils import instantiate

    with compose_cfg() as cfg:
        task = instantiate(cfg.task, net=instantiate(cfg.model), optimizer=partial(torch.optim.SGD, lr=0.1),
                           scheduler=None, loss=nn.CrossEntropyLoss())  # fmt: skip
    y = torch.tensor([3, 1])
    soft = nn.functional.one_hot(y, 10).float() * 0.7 + 0.03
    loss = task._shared_step((torch.rand(2, 1, 28, 28), soft), "train")
    assert torch.isfinite(loss) and task.train_metrics["acc"].update_count == 1
    assert task.train_loss.update_count == 1  # the epoch's loss, logged once at its end


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-1"], "Invalid learning rate: -1"),
        (["optimizer=sgd", "optimizer.momentum=-0.5"], "Invalid momentum value: -0.5"),
        (["loss=focal", "loss.gamma=-1"], "loss.gamma=-1 must be >= 0"),
        (["loss=focal", "loss.alpha=2"], "loss.alpha=2 must be in [0, 1]"),
        (["loss.label_smoothing=1.5"], "label_smoothing must be between 0.0 and 1.0"),
        (
            ["scheduler.scheduler.warmup_epochs=60"],
            "warmup_epochs=60 must be in [0, max_epochs=60)",
        ),
        (["task.l1=-0.1"], "task.l1=-0.1 must be >= 0"),
        (["data.imbalance_ratio=0.5"], "data.imbalance_ratio must be a finite number >= 1"),
        (["init=normal", "init.std=0"], "init.std must be > 0, got 0"),
        (["init=irnn", "init.gain=0"], "init.gain must be > 0, got 0"),
        (
            ["task=sequence", "data=adding", "model=rnn", "callbacks.grad_norm.norm_type=0"],
            "norm_type",
        ),
        (["init=kaiming_normal", "init.mode=fan_avg"], "valid: fan_in, fan_out"),
    ],
)
def test_bad_values_fail_before_a_run_exists(overrides, message, compose_cfg, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/bad.db"
    with compose_cfg(f"logger.tracking_uri={uri}", *overrides) as cfg:
        try:
            build(cfg)
        except ConfigError as err:
            assert message in str(err) and "\n" not in str(err)
        else:
            pytest.fail(f"{overrides} built without an error")
    assert not (tmp_path / "bad.db").exists()  # no store, no run


def test_seed_streams_are_separate(compose_cfg) -> None:
    """seeds.init fixes the weights whatever `seed` is; seeds.data fixes the shuffling order."""
    from hydra.utils import instantiate

    def first_weights_and_batch(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
        with compose_cfg(*overrides) as cfg:
            torch.manual_seed(cfg.seeds.init)  # as the training run does before building
            net = instantiate(cfg.model)
            datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
            datamodule.prepare_data()
            datamodule.setup("fit")
            _, y = next(iter(datamodule.train_dataloader()))
        return next(net.parameters()).detach().clone(), y

    w0, y0 = first_weights_and_batch("seed=0", "seeds.init=7", "seeds.data=3")
    w1, y1 = first_weights_and_batch("seed=0", "seeds.init=8", "seeds.data=3")
    w2, y2 = first_weights_and_batch("seed=0", "seeds.init=7", "seeds.data=4")
    assert not torch.equal(w0, w1) and torch.equal(y0, y1)  # init differs, data order shared
    assert torch.equal(w0, w2) and not torch.equal(y0, y2)  # data order differs, init shared


def test_seeds_split_fixes_the_split_whatever_seed_is(compose_cfg) -> None:
    """seeds.split follows `seed` unless set: seed=0 and seed=1 split differently, and with
    seeds.split=0 both keep seed 0's split while everything else follows their own seed."""
    from hydra.utils import instantiate

    def validation_set(*overrides: str) -> torch.Tensor:
        with compose_cfg(*overrides) as cfg:
            datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
            datamodule.prepare_data()
            datamodule.setup("fit")
            assert cfg.data.order_seed == cfg.seed  # the order still follows `seed`
            return datamodule.splits["val"].tensors[0]

    base = validation_set("seed=0")
    assert not torch.equal(base, validation_set("seed=1"))
    assert torch.equal(base, validation_set("seed=1", "seeds.split=0"))
