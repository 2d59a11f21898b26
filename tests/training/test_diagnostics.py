"""The diagnostics callback: exact metric steps, identical keys across inits, the zero-init symmetry
claim, dead units by zero gradient (not by sign), a probe that leaves the model and the training
step untouched, every model family, and one-line config errors."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from PIL import Image
from torch import Tensor, nn

from ablab.config import composed
from ablab.errors import ConfigError
from ablab.layers.act import Maxout
from ablab.training.diagnostics import KINDS, LayerDiagnostics
from ablab.training.run import Run, build

FAST = [
    "trainer=smoke",
    "callbacks=diagnostics",
    "callbacks.batch_preview=null",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "logger.log_model=false",
    "experiment_name=diagnostics",
]
EVERY, STEPS = 3, 7  # snapshots at 0, 3, 6; the run ends at step 7, off the grid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a sqlite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('diagnostics')}/mlflow.db"


def fit(compose_cfg, store: str, *overrides: str, zero: bool = False):
    """Build from the real config (optionally with every weight and bias zeroed) and fit."""
    with compose_cfg(*FAST, f"logger.tracking_uri={store}", *overrides) as cfg:
        run = build(cfg)
        if zero:  # the notes' zero init, applied directly (independent of the init group)
            for p in run.task.net.parameters():
                nn.init.zeros_(p)
        run.trainer.fit(run.task, datamodule=run.datamodule)
    return run


def weight_layers(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def history(run, key: str) -> dict[int, float]:
    client: MlflowClient = run.logger.experiment
    return {m.step: m.value for m in client.get_metric_history(run.logger.run_id, key)}


def diag_keys(run) -> set[str]:
    client: MlflowClient = run.logger.experiment
    metrics = client.get_run(run.logger.run_id).data.metrics
    return {k for k in metrics if k.startswith("diag/")}


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory) -> dict[str, Run]:
    """LeNet-5 on digits for 7 steps: ReLU with default and all-zero init, sigmoid all-zero."""

    root = tmp_path_factory.mktemp("root")

    def compose(*overrides: str):
        return composed(list(overrides), output_dir=str(root / "run"))

    args = [f"trainer.limit_train_batches={STEPS}", f"callbacks.diagnostics.every_n_steps={EVERY}"]
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped isolation is not active yet
        mp.setenv("ABLAB_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return {
            "relu": fit(compose, store, *args, "model.act=relu"),
            "relu_zeros": fit(compose, store, *args, "model.act=relu", zero=True),
            "sigmoid_zeros": fit(compose, store, *args, "model.act=sigmoid", zero=True),
        }


def probe_predictions(run: Run) -> torch.Tensor:
    (diag,) = [c for c in run.trainer.callbacks if isinstance(c, LayerDiagnostics)]
    with torch.no_grad():
        return run.task.eval()(diag.probe).argmax(dim=1)


def test_metric_keys_are_identical_across_inits_and_steps_on_the_grid(runs) -> None:
    default, zeros = runs["relu"], runs["relu_zeros"]
    keys = diag_keys(default)
    assert keys == diag_keys(zeros)
    net = default.task.net
    families = {k.split("/")[1] for k in keys}
    assert families == {
        "act_mean",
        "act_std",
        "dead",
        "never_positive",
        "grad_norm",
        "update_ratio",
        "identical_units",
        "unit_spread",
    }  # LeNet has no BN
    layers = {k.split("/", 2)[2] for k in keys if k.startswith("diag/grad_norm/")}
    assert layers == set(weight_layers(net))
    relus = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
    assert {k for k in keys if k.startswith("diag/dead/")} == {f"diag/dead/{n}" for n in relus}
    assert {k for k in keys if k.startswith("diag/never_positive/")} == {
        f"diag/never_positive/{n}" for n in relus
    }
    for run in runs.values():
        assert run.trainer.global_step == STEPS
        for key in diag_keys(run):  # 0, N, 2N; step 7 is off the grid and not logged
            assert sorted(history(run, key)) == [0, EVERY, 2 * EVERY], key


def test_zero_init_relu_net_is_dead_and_at_chance(runs) -> None:
    zeros, default = runs["relu_zeros"], runs["relu"]
    hidden = weight_layers(zeros.task.net)[:-1]  # every weight layer but the output layer
    for layer in hidden:
        assert set(history(zeros, f"diag/identical_units/{layer}").values()) == {1.0}, layer
        # relu(0) = 0: no signal forward, no gradient back, the hidden weights never move
        assert set(history(zeros, f"diag/grad_norm/{layer}").values()) == {0.0}, layer
        assert history(default, f"diag/identical_units/{layer}")[0] == 0.0, layer
        assert history(default, f"diag/unit_spread/{layer}")[0] > 0.5, layer
    relus = [n for n, m in zeros.task.net.named_modules() if isinstance(m, nn.ReLU)]
    for layer in relus:
        # relu'(0) = 0: no gradient flows through any unit
        assert set(history(zeros, f"diag/dead/{layer}").values()) == {1.0}, layer
        assert set(history(zeros, f"diag/never_positive/{layer}").values()) == {1.0}, layer
        assert history(default, f"diag/dead/{layer}")[0] < 1.0, layer
    # only the output bias learns: one class for every input, i.e. chance level
    assert probe_predictions(zeros).unique().numel() == 1
    assert probe_predictions(default).unique().numel() > 1
    val = {k: float(r.trainer.callback_metrics["val/acc"]) for k, r in runs.items()}
    assert val["relu_zeros"] < val["relu"], val


def test_zero_init_sigmoid_units_stay_identical_while_they_train(runs) -> None:
    zeros = runs["sigmoid_zeros"]
    hidden = weight_layers(zeros.task.net)[:-1]
    assert len(hidden) == 4
    for layer in hidden:
        assert set(history(zeros, f"diag/identical_units/{layer}").values()) == {1.0}, layer
        assert max(history(zeros, f"diag/unit_spread/{layer}").values()) < 1e-6, layer  # round-off
        # sigmoid(0) = 1/2 lets gradient through: every hidden layer is updated, yet its units
        # get identical updates and stay copies of each other
        assert history(zeros, f"diag/grad_norm/{layer}")[2 * EVERY] > 0, layer
        assert history(zeros, f"diag/update_ratio/{layer}")[2 * EVERY] > 0, layer
    sigmoids = [n for n, m in zeros.task.net.named_modules() if isinstance(m, nn.Sigmoid)]
    assert sigmoids
    for layer in sigmoids:
        # dead at init only because the layers above are all zero (no gradient from above);
        # once they have moved, gradient flows through every unit
        assert history(zeros, f"diag/dead/{layer}")[0] == 1.0, layer
        assert history(zeros, f"diag/dead/{layer}")[2 * EVERY] == 0.0, layer
    assert history(zeros, f"diag/identical_units/{weight_layers(zeros.task.net)[-1]}")[0] == 1.0


def test_artifacts_plot_and_numbers(runs, tmp_path: Path) -> None:
    run = runs["relu"]
    client: MlflowClient = run.logger.experiment
    run_id = run.logger.run_id
    png = Path(client.download_artifacts(run_id, "diagnostics/layers.png", str(tmp_path)))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 500
        image.verify()
    data = json.loads(
        Path(
            client.download_artifacts(run_id, "diagnostics/layers.json", str(tmp_path))
        ).read_text()
    )
    assert data["every_n_steps"] == EVERY and data["probe_size"] == 64
    assert data["init"]["step"] == 0 and data["end"]["step"] == STEPS
    assert data["init"]["grad_step"] == 0 and data["end"]["grad_step"] == 2 * EVERY
    assert data["layers"]["weights"] == weight_layers(run.task.net)
    # the JSON holds the same numbers as the metrics at step 0
    for layer, value in data["init"]["act_std"].items():
        assert history(run, f"diag/act_std/{layer}")[0] == pytest.approx(value)
    for layer, value in data["end"]["grad_norm"].items():
        assert history(run, f"diag/grad_norm/{layer}")[2 * EVERY] == pytest.approx(value)


class Holder(nn.Module):
    """The task's shape as the callback sees it: a ``net`` attribute, forward = net, ``loss_fn``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_net(compose_cfg, model: str, *overrides: str) -> nn.Module:
    with compose_cfg(f"model={model}", *overrides) as cfg:
        return instantiate(cfg.model)


def test_probe_leaves_bn_running_stats_and_modes_untouched(compose_cfg) -> None:
    torch.manual_seed(0)
    net = make_net(compose_cfg, "resnet20", "model.dropout=0.5")
    holder = Holder(net).train()
    holder(torch.randn(16, 1, 28, 28))  # non-trivial running stats
    before = {k: v.clone() for k, v in net.state_dict().items()}
    diag = LayerDiagnostics(kinds=["conv", "act", "norm"])
    diag.probe = torch.randn(8, 1, 28, 28)
    diag.probe_target = torch.randint(0, 10, (8,))
    first = diag.measure_forward(holder, step=0)
    second = diag.measure_forward(holder, step=0)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats, counters too
    assert all(m.training for m in net.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())  # the probe's backward accumulates none
    assert first.values["dead"]
    assert first.values == second.values  # dropout is off in the probe: deterministic
    # BN normalises with the probe's batch statistics (as in training), not its running stats
    assert first.values["act_std"]["stem.0.norm"] == pytest.approx(1.0, abs=1e-3)
    assert first.values["act_std"]["stem.0.conv"] != pytest.approx(1.0, abs=0.05)
    assert set(first.values["bn_var"]) == {
        n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
    }


@pytest.mark.parametrize("model", ["resnet20", "plain20", "lenet5", "vit_tiny_p4"])
def test_every_family_gives_finite_per_layer_stats(model, compose_cfg) -> None:
    torch.manual_seed(0)
    net = make_net(compose_cfg, model, "model.act=relu")
    diag = LayerDiagnostics()
    diag.probe = torch.randn(8, 1, 28, 28)
    diag.probe_target = torch.randint(0, 10, (8,))
    snap = diag.measure_forward(Holder(net).train(), step=0)
    weights = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    acts = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
    assert acts, "model.act=relu builds ReLU modules"
    assert list(snap.values["identical_units"]) == weights
    assert set(snap.values["act_std"]) == {*weights, *acts}
    assert set(snap.values["dead"]) == set(snap.values["never_positive"]) == set(acts)
    assert all(v == 0.0 for v in snap.values["identical_units"].values())  # random init
    for family, layers in snap.values.items():
        assert all(torch.isfinite(torch.tensor(v)) for v in layers.values()), family
    for family in ("dead", "never_positive"):
        assert all(0 <= v <= 1 for v in snap.values[family].values()), family


FORCED = (0, 2, 5)  # channels of the tiny net driven never positive
WIDTH = 8


def tiny_net(act: nn.Module) -> nn.Sequential:
    """conv(1→8) → act → global average pool → linear(8→4), channels ``FORCED`` never positive."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, WIDTH, 3), act, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 4)
    )
    with torch.no_grad():
        net[0].bias[list(FORCED)] = -1e3  # far below anything the weights make of N(0, 1) pixels
    return net


def probe_snapshot(net: nn.Module, samples: int = 16, **kwargs) -> dict[str, dict[str, float]]:
    diag = LayerDiagnostics(kinds=["conv", "linear", "act"], **kwargs)
    torch.manual_seed(1)
    diag.probe = torch.randn(samples, 1, 8, 8)
    diag.probe_target = torch.randint(0, 4, (samples,))
    return diag.measure_forward(Holder(net), step=0).values


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_units_never_positive_are_dead(inplace) -> None:
    values = probe_snapshot(tiny_net(nn.ReLU(inplace=inplace)))
    assert values["dead"] == {"1": len(FORCED) / WIDTH}
    assert values["never_positive"] == {"1": len(FORCED) / WIDTH}


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.01), nn.PReLU(WIDTH)], ids=["leaky", "prelu"])
def test_leaky_units_never_positive_still_pass_gradient(act) -> None:
    net = tiny_net(act)
    values = probe_snapshot(net)
    assert values["never_positive"] == {"1": len(FORCED) / WIDTH}  # the sign test calls them dead
    assert values["dead"] == {"1": 0.0}  # but gradient flows through the negative slope
    with torch.no_grad():
        net[-1].weight[:, 7] = 0.0  # no gradient from above into channel 7
    assert probe_snapshot(net)["dead"] == {"1": 1 / WIDTH}


class Tokens(nn.Module):
    """(N, 20) → (N, 5, 4) tokens → Linear(4 → 8) → ReLU → mean over tokens → Linear(8 → 3):
    a transformer MLP's layout, hidden units last; units 0-3 forced never positive."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.act, self.out = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)
        with torch.no_grad():
            self.up.bias[:4] = -1e3

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.up(x.view(len(x), 5, 4))).mean(1))


def test_token_activations_count_their_hidden_units_not_their_positions() -> None:
    diag = LayerDiagnostics(kinds=["act"])
    torch.manual_seed(0)
    diag.probe, diag.probe_target = torch.randn(16, 20), torch.randint(0, 3, (16,))
    values = diag.measure_forward(Holder(Tokens()), step=0).values
    assert values["dead"] == {"act": 0.5} and values["never_positive"] == {"act": 0.5}


def test_a_unit_positive_for_one_probe_sample_is_not_dead() -> None:
    first = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.copy_(torch.tensor([-100.0, -5.0]))  # unit 1 is positive only where x > 5
    net = nn.Sequential(first, nn.ReLU(), nn.Linear(2, 3))
    diag = LayerDiagnostics(kinds=["act"])
    diag.probe = torch.tensor([[-1.0], [0.0], [2.0], [10.0]])
    diag.probe_target = torch.tensor([0, 1, 2, 0])
    assert diag.measure_forward(Holder(net), step=0).values["dead"] == {"1": 0.5}
    diag.probe, diag.probe_target = diag.probe[:3], diag.probe_target[:3]  # without x = 10
    assert diag.measure_forward(Holder(net), step=0).values["dead"] == {"1": 1.0}


def test_every_activation_type_gets_a_dead_fraction_and_no_labels_none() -> None:
    for make in KINDS["act"]:
        act = make(WIDTH) if make in (nn.PReLU, Maxout) else make()
        values = probe_snapshot(tiny_net(act))
        assert 0.0 <= values["dead"]["1"] <= 1.0, make.__name__
    diag = LayerDiagnostics(kinds=["act"])
    diag.probe = torch.randn(4, 1, 8, 8)  # no labels: forward statistics only
    values = diag.measure_forward(Holder(tiny_net(nn.ReLU())), step=0).values
    assert "dead" not in values and values["never_positive"] == {"1": len(FORCED) / WIDTH}


class LossScaler:
    """The part of AMP's GradScaler the probe reads."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scale


def test_the_probe_backward_is_scaled_like_the_training_one() -> None:
    """A gradient that underflows to 0 unscaled but not under the trainer's loss scale (as
    under fp16 AMP) flows in training, so its unit is not dead."""
    first, second = nn.Linear(1, 2), nn.Linear(2, 3)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.copy_(torch.tensor([-40.0, 0.0]))  # unit 0: σ(x) ≈ σ'(x) ≈ 1e-17
        # ~1e-31 from above (one class only: Σ_k ∂L/∂logit_k = 0 would cancel equal weights),
        # times σ' ≈ 1e-17 is below fp32's smallest subnormal, 1.4e-45
        second.weight[:, 0] = torch.tensor([1e-30, 0.0, 0.0])
    net = nn.Sequential(first, nn.Sigmoid(), second)
    diag = LayerDiagnostics(kinds=["act"])
    diag.probe = torch.tensor([[-1.0], [0.0], [1.0], [2.0]])
    diag.probe_target = torch.tensor([0, 1, 2, 0])
    for scaler, dead in ((None, 0.5), (LossScaler(2.0**16), 0.0)):
        plugin = SimpleNamespace(train_step_context=nullcontext, scaler=scaler)
        trainer = SimpleNamespace(is_global_zero=True, precision_plugin=plugin)
        assert diag.measure_forward(Holder(net), 0, trainer).values["dead"] == {"1": dead}


def test_a_snapshot_leaves_the_training_step_unchanged(compose_cfg) -> None:
    """Gradients, optimizer step and BN buffers equal those of a twin that takes no snapshot."""
    torch.manual_seed(0)
    nets = [make_net(compose_cfg, "resnet20", "model.act=prelu")]
    nets.append(copy.deepcopy(nets[0]))
    holders = [Holder(net).train() for net in nets]
    optimizers = [torch.optim.SGD(h.parameters(), lr=0.1, momentum=0.9) for h in holders]
    diag = LayerDiagnostics()
    diag.probe = torch.randn(8, 1, 28, 28)
    diag.probe_target = torch.randint(0, 10, (8,))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step in range(2):
        for i, (holder, optimizer) in enumerate(zip(holders, optimizers, strict=True)):
            if i == 0:
                assert diag.measure_forward(holder, step).values["dead"]
            optimizer.zero_grad()
            holder.loss_fn(holder(x), y).backward()
            if i == 0:  # between backward and step: the gradients must not move
                diag.measure_forward(holder, step)
        grads = [[p.grad for p in h.parameters()] for h in holders]
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
        for optimizer in optimizers:
            optimizer.step()
        states = [net.state_dict() for net in nets]
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_max_layers_keeps_first_and_last_evenly_spaced(compose_cfg) -> None:
    net = make_net(compose_cfg, "resnet20")
    layers = LayerDiagnostics(max_layers=5).select_layers(net)
    convs = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [n for n, _ in layers.weights]
    assert len(names) == 5 and names[0] == convs[0] and names[-1] == convs[-1]
    assert names == sorted(names, key=convs.index)
    assert len(layers.outputs) == len(layers.batch_norms) == 5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "callbacks.diagnostics.every_n_steps=0",
            "every_n_steps must be a positive integer, got 0",
        ),
        ("callbacks.diagnostics.kinds=[conv,bogus]", "unknown diagnostics kind 'bogus'"),
        ("callbacks.diagnostics.max_layers=1", "max_layers must be an integer ≥ 2, got 1"),
    ],
)
def test_bad_options_are_one_line_errors_while_building(override, message, compose_cfg) -> None:
    with compose_cfg(*FAST, override) as cfg, pytest.raises(ConfigError) as err:
        build(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
