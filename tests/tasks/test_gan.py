"""The GAN task's objectives against hand computations, DCGAN's nets, the manual optimization
through the real build, the sample scores on a tiny cached classifier, and its checks."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from scipy.spatial.distance import jensenshannon
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ablab.data import DigitsDataModule
from ablab.errors import ConfigError
from ablab.models import LeNet5
from ablab.models.gan import DCGANDiscriminator, DCGANGenerator
from ablab.registry import GAN_LOSS
from ablab.tasks.gan import (
    GRID_SEED,
    ClassifierFeatures,
    FeatureClassifier,
    GANModule,
    gradient_penalty,
)
from ablab.training.callbacks import NonFiniteLossError
from ablab.training.run import build

#: A tiny GAN on digits, built and trained in-process without tracking: 5 batches of 16.
TINY = [
    "task=gan",
    "trainer=smoke",
    "trainer.limit_train_batches=5",
    "~logger",
    "callbacks.batch_preview=null",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "data.batch_size=16",
    "generator.base_width=4",
    "discriminator.base_width=4",
    "task.latent_size=8",
    "task.grid_size=4",
    "task.fid=false",
]


def fit(compose_cfg, *overrides: str):
    with compose_cfg(*TINY, *overrides) as cfg:
        run = build(cfg)
        run.trainer.fit(run.task, datamodule=run.datamodule)
    return run


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# -- the objectives ----------------------------------------------------------------------------
REAL, FAKE = torch.tensor([logit(0.8), logit(0.6)]), torch.tensor([logit(0.3), logit(0.5)])
HAND = {  # (D's loss, G's loss) on the scores above, by hand
    "minimax": (
        -(math.log(0.8) + math.log(0.6)) / 2 - (math.log(0.7) + math.log(0.5)) / 2,
        (math.log(0.7) + math.log(0.5)) / 2,  # E log(1 − D(G(z))), minimised by G
    ),
    "non_saturating": (
        -(math.log(0.8) + math.log(0.6)) / 2 - (math.log(0.7) + math.log(0.5)) / 2,
        -(math.log(0.3) + math.log(0.5)) / 2,  # −E log D(G(z))
    ),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_cross_entropy_losses_on_hand_computed_probabilities(name) -> None:
    objective = GAN_LOSS[name]
    d_loss, g_loss = HAND[name]
    assert objective.discriminator(REAL, FAKE).item() == pytest.approx(d_loss, rel=1e-6)
    assert objective.generator(FAKE).item() == pytest.approx(g_loss, rel=1e-6)


def test_least_squares_and_wasserstein_losses_on_hand_computed_scores() -> None:
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    lsgan = GAN_LOSS["lsgan"]  # ½ E (s_r − 1)² + ½ E s_f²; ½ E (s_f − 1)²
    assert lsgan.discriminator(real, fake).item() == pytest.approx(0.5 * 0.125 + 0.5 * 0.5)
    assert lsgan.generator(fake).item() == pytest.approx(0.5 * 0.5)
    wgan = GAN_LOSS["wgan_gp"]  # E s_f − E s_r; −E s_f
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert wgan.discriminator(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert wgan.generator(fake).item() == pytest.approx(0.0)
    assert wgan.gradient_penalty and wgan.floor is None
    assert not any(GAN_LOSS[n].gradient_penalty for n in ("minimax", "non_saturating", "lsgan"))


def test_the_optimal_discriminators_loss_is_log_4_minus_twice_the_js_divergence() -> None:
    """Claim 38: with D* = p_data / (p_data + p_g), −loss_D = V(D*, G) = 2·JSD − log 4.

    p_data = (½, ¼, ¼) and p_g = (¼, ¼, ½) on three points, as four samples each; D*'s logit at
    a point is log(p_data / p_g)."""
    p_data, p_g = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    real_points, fake_points = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 2])
    best = torch.log(p_data / p_g)
    d_loss = GAN_LOSS["minimax"].discriminator(best[real_points], best[fake_points])
    jsd = jensenshannon(p_data.numpy(), p_g.numpy()) ** 2  # natural log: JSD in nats
    assert -d_loss.item() == pytest.approx(2 * jsd - math.log(4), rel=1e-6)
    # the same G as the data: D* = ½ everywhere and the loss is log 4
    same = GAN_LOSS["minimax"].discriminator(torch.zeros(4), torch.zeros(4))
    assert same.item() == pytest.approx(math.log(4))


def test_the_loss_table_names_four_objectives_and_refuses_others_in_one_line() -> None:
    assert GAN_LOSS.names() == ["lsgan", "minimax", "non_saturating", "wgan_gp"]
    with pytest.raises(ConfigError, match=r"task.loss: unknown gan loss 'wgan'.*wgan_gp") as err:
        GANModule(nn.Identity(), nn.Identity(), None, None, num_classes=10, loss="wgan", fid=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("norm", "penalty"), [(1.0, 0.0), (3.0, 4.0)])
def test_gradient_penalty_of_a_linear_critic_is_its_gradient_norm_minus_one_squared(
    norm, penalty
) -> None:
    """critic(x) = w·vec(x): ∇ = w everywhere, so the penalty is (‖w‖ − 1)², 0 at ‖w‖ = 1."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1 * 28 * 28, generator=g)
    w = (w / w.norm() * norm).requires_grad_(True)
    real, fake = torch.rand(8, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    value = gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    assert value.item() == pytest.approx(penalty, abs=1e-5)
    value.backward()  # differentiable: the critic's step takes its gradient
    assert w.grad is not None


# -- the nets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_generator_and_discriminator_shapes_and_gradients(channels, size) -> None:
    gen = DCGANGenerator(16, channels, size, base_width=8)
    disc = DCGANDiscriminator(channels, size, base_width=8)
    images = gen(torch.randn(4, 16))
    assert images.shape == (4, channels, size, size)
    assert images.abs().max() <= 1  # tanh
    scores = disc(images)
    assert scores.shape == (4,)
    scores.sum().backward()
    for net in (gen, disc):
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing and all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_stages_halve_down_to_a_map_of_four_to_seven_pixels() -> None:
    # 28 = 7·2² (7 → 14 → 28), 32 = 4·2³ (4 → 8 → 16 → 32)
    for size, maps in ((28, [14, 28]), (32, [8, 16, 32])):
        gen = DCGANGenerator(8, 1, size, base_width=4)
        h = gen.project(torch.randn(2, 8, 1, 1))
        assert h.shape[-1] == maps[0] // 2
        for stage, side in zip([*gen.stages, gen.head], maps, strict=True):
            h = stage(h)
            assert h.shape[-1] == side
        disc = DCGANDiscriminator(1, size, base_width=4)
        assert disc.stages(torch.zeros(2, 1, size, size)).shape[-1] == maps[0] // 2


def test_64px_nets_are_dcgans_reference_nets_plus_the_biases_it_leaves_out() -> None:
    """PyTorch's DCGAN example (nz 100, 64 filters, RGB): G 3,576,704 and D 2,765,568
    parameters; here G's output conv has a bias (+3), and so do D's input conv (+64, no norm
    follows it) and its output conv (+1)."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(DCGANGenerator(100, 3, 64, 64)) == 3_576_704 + 3
    assert count(DCGANDiscriminator(3, 64, 64)) == 2_765_568 + 64 + 1


def test_norm_none_leaves_no_norm_layer_and_gives_every_conv_a_bias() -> None:
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    for net in (
        DCGANGenerator(8, 1, 32, 4, norm="none"),
        DCGANDiscriminator(1, 32, 4, norm="none"),
    ):
        assert not any(isinstance(m, norms) for m in net.modules())
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        assert convs and all(m.bias is not None for m in convs)
    # with bn: every layer but G's output and D's input (3 halvings at 32 px)
    count = lambda net: sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # noqa: E731
    assert count(DCGANGenerator(8, 1, 32, 4)) == 3 and count(DCGANDiscriminator(1, 32, 4)) == 2


def test_conditional_nets_read_the_label() -> None:
    gen = DCGANGenerator(8, 1, 28, 4, num_classes=10).eval()
    disc = DCGANDiscriminator(1, 28, 4, num_classes=10)
    z = torch.randn(1, 8).expand(2, -1)
    y = torch.tensor([3, 7])
    images = gen(z, y)
    assert images.shape == (2, 1, 28, 28)
    assert not torch.allclose(images[0], images[1])  # one noise, two labels, two images
    assert disc(images, y).shape == (2,)
    assert disc.stages[0][0].in_channels == 1 + 10  # the labels as ten one-hot maps
    assert gen.project[0].in_channels == 8 + 10
    with pytest.raises(ValueError, match="needs one label per sample"):
        gen(z)
    with pytest.raises(ValueError, match="unconditional but was given labels"):
        DCGANGenerator(8, 1, 28, 4)(z, y)


@pytest.mark.parametrize("size", [30, 12, 7])
def test_sizes_a_dcgan_cannot_halve_twice_are_one_line(size) -> None:
    for make in (lambda: DCGANGenerator(8, 1, size), lambda: DCGANDiscriminator(1, size)):
        with pytest.raises(ConfigError, match=rf"image_size={size} does not fit a DCGAN") as err:
            make()
        assert "\n" not in str(err.value)


# -- the task ----------------------------------------------------------------------------------
def test_images_reach_the_gan_in_minus_one_to_one_whatever_the_standardisation() -> None:
    pixels = torch.rand(4, 1, 28, 28)
    for normalize in (True, "per_pixel_mean", False):
        data = DigitsDataModule(normalize=normalize)
        data.setup("fit")
        task = GANModule(nn.Identity(), nn.Identity(), None, None, num_classes=10, fid=False)
        task._data = data
        assert torch.allclose(task.to_images(data.standardize(pixels)), pixels * 2 - 1, atol=1e-5)


def test_the_grid_noise_is_a_fixed_draw_kept_in_the_state_dict() -> None:
    make = lambda: GANModule(  # noqa: E731
        nn.Identity(), nn.Identity(), None, None, num_classes=10, latent_size=5, grid_size=6,
        fid=False,
    )  # fmt: skip
    state = make().state_dict()
    expected = torch.randn(6, 5, generator=torch.Generator().manual_seed(GRID_SEED))
    assert torch.equal(state["grid_noise"], expected)
    assert torch.equal(state["grid_labels"], torch.arange(6))
    assert {"d_steps", "collapse_run", "collapsed"} <= set(state)


@pytest.mark.parametrize(
    ("overrides", "n_critic"),
    [
        (["task.loss=minimax"], 1), (["task.loss=non_saturating"], 1), (["task.loss=lsgan"], 1),
        (["task.loss=wgan_gp", "discriminator.norm=none"], 5),
        (["task.loss=wgan_gp", "discriminator.norm=ln", "task.n_critic=2"], 2),
        (["task.conditional=true", "generator.norm=none"], 1),
    ],
    ids=lambda o: " ".join(o) if isinstance(o, list) else str(o),
)  # fmt: skip
def test_every_objective_trains_d_every_batch_and_g_every_n_critic(
    overrides, n_critic, compose_cfg
) -> None:
    run = fit(compose_cfg, *overrides)
    task = run.task
    assert task.n_critic == n_critic  # wgan_gp's default is 5
    g_opt, d_opt = run.trainer.optimizers
    steps = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert int(task.d_steps) == steps(d_opt) == 5
    assert steps(g_opt) == 5 // n_critic
    assert run.trainer.global_step == 5 + 5 // n_critic  # Lightning counts both optimizers
    metrics = run.trainer.callback_metrics
    for key in ("train/d_loss", "train/d_real", "train/d_fake", "val/d_loss", "val/g_loss"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["train/d_collapsed"] == 0
    assert ("train/gp" in metrics) == ("task.loss=wgan_gp" in overrides)
    assert (task.monitor, task.mode) == ("val/d_loss", "max")  # without fid


def test_a_non_finite_loss_stops_the_run_under_manual_optimization(compose_cfg) -> None:
    with compose_cfg(*TINY) as cfg:
        run = build(cfg)
    run.task.generator.register_forward_hook(lambda module, args, out: out * float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        run.trainer.fit(run.task, datamodule=run.datamodule)
    assert int(run.task.d_steps) == 1


def test_a_collapsed_discriminator_is_tagged_once_and_stops_only_when_asked() -> None:
    for stop in (False, True):
        task = GANModule(
            nn.Identity(), nn.Identity(), None, None, num_classes=10, fid=False,
            collapse_steps=3, collapse_threshold=0.01, collapse_stop=stop,
        )  # fmt: skip
        one_rank = SimpleNamespace(reduce=lambda value, reduce_op: value)
        task._trainer = SimpleNamespace(
            is_global_zero=True, loggers=[], global_step=0, should_stop=False, strategy=one_rank
        )
        for d_loss in (0.001, 0.002, 0.5, 0.001, 0.0, 0.009):  # in a row: 2, then 3
            assert not int(task.collapsed)
            task._watch_collapse(torch.tensor(d_loss))
        assert int(task.collapsed) == 1 and task.trainer.should_stop is stop
    # DDP: the ranks' mean decides, so every rank stops together or none does
    task = GANModule(nn.Identity(), nn.Identity(), None, None, num_classes=10, fid=False,
                     collapse_steps=2, collapse_stop=True)  # fmt: skip
    others_fine = SimpleNamespace(reduce=lambda value, reduce_op: (value + 1.0) / 2)
    task._trainer = SimpleNamespace(
        is_global_zero=True, loggers=[], global_step=0, should_stop=False, strategy=others_fine
    )
    for _ in range(5):
        task._watch_collapse(torch.tensor(0.0))  # this rank's D at its floor, the other's not
    assert not int(task.collapsed) and not task.trainer.should_stop
    critic = GANModule(nn.Identity(), nn.Identity(), None, None, num_classes=10, fid=False,
                       loss="wgan_gp", collapse_steps=1)  # fmt: skip
    critic._watch_collapse(torch.tensor(-100.0))  # a critic's loss has no floor to collapse to
    assert not int(critic.collapsed)


TRACKED = [o for o in TINY if o != "~logger"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.loss=wgan_gp"], r"task.loss=wgan_gp penalises .* batch norm .* "
                                r"use discriminator.norm=none \(or ln, gn\)"),
        (["data=adding"], "generator=dcgan reads data.in_channels, which data=adding does not"),
        (["data.noise=gaussian", "data.noise_level=0.3"],
         "task=gan learns the clean images"),
        (["task.conditional=true", "generator.num_classes=0"],
         "generator.num_classes=0 does not fit task.conditional=true"),
        (["data.image_size=30"], r"image_size=30 does not fit a DCGAN"),
        (["trainer.gradient_clip_val=1"], r"GANModule steps its own optimizers .* "
                                          r"use trainer.gradient_clip_val=null"),
        (["+trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches=2 are not"),
        (["+trainer.max_steps=10"], "trainer.max_steps=10 would count each of their steps"),
        (["trainer.strategy=ddp"], "use trainer.strategy=ddp_find_unused_parameters_true"),
        (["trainer.accelerator=cpu", "trainer.devices=2"],
         r"trainer.strategy=auto with trainer.devices=2 trainer.num_nodes=1 \(Lightning's ddp\) "
         "expects every one to; use trainer.strategy=ddp_find_unused_parameters_true"),
        (["model=resnet20"], "model=resnet20 is not used: GANModule builds its networks from "
                             "discriminator, generator; drop the model option"),
        (["callbacks=diagnostics"], r"callbacks.diagnostics \(LayerDiagnostics\) runs the task"),
    ],
    ids=["wgan_gp+bn", "sequences", "noise", "conditional", "size", "clip", "accumulate",
         "max_steps", "ddp", "auto-ddp", "model", "diagnostics"],
)  # fmt: skip
def test_what_does_not_fit_is_one_line_before_any_run(overrides, message, compose_cfg, tmp_path):
    store = tmp_path / "store" / "m.db"
    with (
        compose_cfg(*TRACKED, f"logger.tracking_uri=sqlite:///{store}", *overrides) as cfg,
        pytest.raises(ConfigError, match=message) as err,
    ):
        build(cfg)
    assert "\n" not in str(err.value)
    assert not store.parent.exists()  # no store made, so no run


def test_nets_follow_the_datas_channels_and_size(compose_cfg) -> None:
    with compose_cfg(*TINY, "data=synthetic", "data.in_channels=3", "data.image_size=32") as cfg:
        run = build(cfg)
    assert run.task.generator(torch.zeros(2, 8)).shape == (2, 3, 32, 32)
    assert set(run.complexity) == {"generator", "discriminator"}  # each traced on its own input


# -- the sample scores ---------------------------------------------------------------------------
def test_the_frechet_distance_of_a_set_with_itself_is_zero_and_grows_as_it_shifts() -> None:
    torch.manual_seed(0)
    features = ClassifierFeatures(LeNet5(act="relu"))
    images = torch.rand(256, 1, 28, 28) * 2 - 1
    distances = []
    for shift in (0.0, 0.2, 0.5):
        fid = FrechetInceptionDistance(feature=features)
        fid.update(images, real=True)
        fid.update((images + shift).clamp(-1, 1), real=False)
        distances.append(fid.compute().item())
    assert distances[0] == pytest.approx(0.0, abs=1e-3)
    assert 0 < distances[1] < distances[2]
    assert features.num_features == 84  # LeNet-5's F6: the input of its last linear layer
    features.train()
    assert not features.training and not any(p.requires_grad for p in features.parameters())


def test_the_feature_classifier_is_trained_once_then_read_from_its_cache(tmp_path) -> None:
    data = DigitsDataModule(batch_size=32)
    data.setup("fit")
    make = partial(LeNet5, in_channels=1, num_classes=10, act="relu")

    def load(data: DigitsDataModule, seed: int = 0):
        return FeatureClassifier(make, steps=5, seed=seed, cache_dir=str(tmp_path)).load(data)

    rng = torch.get_rng_state()
    net, info = load(data)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's draws do not depend on the cache
    path = Path(info["path"])
    assert path.parent == tmp_path and path.name.startswith("digits-")
    assert 0.0 <= info["test_acc"] <= 1.0 and info["data"]["image_size"] == 28
    written = path.stat().st_mtime_ns
    again, cached = load(data)
    assert cached == info and path.stat().st_mtime_ns == written
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values(), strict=True))  # fmt: skip
    assert torch.equal(torch.get_rng_state(), rng)
    # the run's batch size and order are not the classifier's: the same one serves them all
    shuffled = DigitsDataModule(batch_size=16, order_seed=7)
    shuffled.setup("fit")
    assert load(shuffled)[1] == info
    _, other = load(data, seed=1)
    assert other["key"] != info["key"]  # another seed, another classifier


def test_fid_mode_coverage_and_label_accuracy_on_a_tiny_cached_classifier(compose_cfg) -> None:
    run = fit(compose_cfg, "task.fid=true", "task.classifier.steps=10", "task.eval_samples=64",
              "task.conditional=true")  # fmt: skip
    metrics = run.trainer.callback_metrics
    assert (run.task.monitor, run.task.mode) == ("val/fid", "min")
    assert math.isfinite(metrics["val/fid"]) and metrics["val/fid"] >= 0
    assert 0 <= metrics["val/mode_coverage"] <= 10
    assert metrics["val/mode_coverage"] == int(metrics["val/mode_coverage"])
    assert 0 <= metrics["val/label_acc"] <= 1
    # the real side: a seeded uniform draw of the training split, not its first images
    train = run.task.scorer.references["train"]
    assert train.samples == 64 and int(train.frechet.real_features_num_samples) == 64
    assert list(run.task.scorer.references) == ["train"]  # validation never reads the test split
    # kept out of the task: not trained, not in checkpoints
    assert not any(k.startswith(("scorer", "frechet")) for k in run.task.state_dict())
    # test is held out: the test split's images and another noise draw, so it is not the
    # validation number again (before, test/fid equalled the selected epoch's val/fid)
    val_fid = float(metrics["val/fid"])
    run.trainer.test(run.task, datamodule=run.datamodule, verbose=False)
    tested = run.trainer.callback_metrics
    held_out = run.task.scorer.references["test"]
    assert held_out.samples == 64 and held_out.frechet is not train.frechet
    assert math.isfinite(tested["test/fid"]) and float(tested["test/fid"]) != val_fid
    # and the same weights scored twice give the same number: the draws are fixed
    again = run.trainer.test(run.task, datamodule=run.datamodule, verbose=False)[0]["test/fid"]
    assert again == pytest.approx(float(tested["test/fid"]), rel=1e-5)


def test_the_gradient_norm_is_one_per_optimizer(compose_cfg) -> None:
    """GradientNorm under two optimizers: G's and D's norms apart, each over its own
    parameters (D's gradients are cleared after its step, so G's norm holds none of them)."""
    from ablab.training.callbacks import GradientNorm

    seen: dict[int, list[float]] = {0: [], 1: []}

    class Record(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            index = trainer.optimizers.index(optimizer)
            grads = [p.grad.flatten() for g in optimizer.param_groups for p in g["params"]
                     if p.grad is not None]  # fmt: skip
            seen[index].append(torch.linalg.vector_norm(torch.cat(grads)).item())
            stray = [p for p in pl_module.parameters() if p.grad is not None and not any(
                p is q for g in optimizer.param_groups for q in g["params"])]  # fmt: skip
            assert not stray  # the other network's gradients were set to None after its step

    with compose_cfg(*TINY) as cfg:
        run = build(cfg)
        run.trainer.callbacks[:0] = [GradientNorm()]
        run.trainer.callbacks.append(Record())
        run.trainer.fit(run.task, datamodule=run.datamodule)
    metrics = run.trainer.callback_metrics
    assert metrics["train/grad_norm_max/0"].item() == pytest.approx(max(seen[0]), rel=1e-5)
    assert metrics["train/grad_norm_max/1"].item() == pytest.approx(max(seen[1]), rel=1e-5)
