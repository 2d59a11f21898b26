"""Generative adversarial nets: a generator G maps noise z ~ N(0, I) to images, a discriminator D
scores images as real or generated, and the two are trained in turn (Goodfellow et al. 2014,
"Generative adversarial nets").

The game is min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 − D(G(z)))]: D *maximises* V, G
*minimises* it (the notes swap the roles). For a fixed G the best D is p_data / (p_data + p_g),
where V = 2·JSD(p_data ‖ p_g) − log 4 (Goodfellow et al. 2014, Theorem 1): D's loss −V is log 4
when G matches the data, and falls as they part.

Both networks are injected (``generator`` and ``discriminator`` groups; DCGAN's by default,
:mod:`ablab.models.gan`) and see images in [−1, 1], G's tanh range: a batch from the data module,
standardised as ``data.normalize`` says, is mapped back to pixels in [0, 1] and then to 2·x − 1,
whatever ``data.normalize`` is. D gives raw scores (logits, or a critic's values), and
``loss`` (the ``GAN_LOSS`` table) says what they mean:

- ``minimax``: D minimises −V (two binary cross-entropies), G minimises E log(1 − D(G(z)));
- ``non_saturating``: the same D; G minimises −E log D(G(z)), which keeps its gradient when D
  rejects its samples confidently, the fix Goodfellow et al. 2014 give (§3);
- ``lsgan``: least squares towards 1 for real and 0 for generated (Mao et al. 2017, "Least
  squares generative adversarial networks", the 0-1-1 coding);
- ``wgan_gp``: a critic maximising E D(x) − E D(G(z)) under a gradient penalty
  λ·E[(‖∇D(x̂)‖₂ − 1)²] on x̂ between real and generated images (Gulrajani et al. 2017,
  "Improved training of Wasserstein GANs"), ``n_critic`` critic steps per generator step. The
  penalty is per sample, so the critic must not use batch norm (refused before the run).

Training uses Lightning's manual optimization: each batch takes one D step (on the batch and
fresh generated images, detached) and, every ``n_critic``-th batch, one G step on fresh noise;
the two optimizers come from the same ``optimizer`` partial (DCGAN's Adam, ``conf/task/gan.yaml``),
and with a scheduler both step together, once per batch or per epoch, whatever ``n_critic``.
``training_step`` returns the step's losses, so :class:`~ablab.training.callbacks.NonFiniteLossGuard`
stops a run whose losses turn NaN. A discriminator that wins completely (its loss below
``collapse_threshold`` for ``collapse_steps`` steps in a row) tags the run ``d_collapsed`` and
sets ``train/d_collapsed`` to 1 (``collapse_stop`` also stops training).

With ``conditional`` both nets read the class label too (Mirza & Osindero 2014, "Conditional
generative adversarial nets"); generated images take the labels of the real batch they are set
against.

Scores, every stage: ``<stage>/d_loss`` (without the gradient penalty; under ``wgan_gp``
−d_loss is the critic's estimate of the Wasserstein distance), ``g_loss``, ``d_real`` and
``d_fake`` (mean scores of real and generated images); held-out stages draw their noise from a
generator seeded by (split, rank, batch), the same at every epoch. With ``fid`` the validation
and test epochs also score ``eval_samples`` images generated from a fixed noise with a classifier
trained on the same data (:class:`FeatureClassifier`, cached on disk): ``<stage>/fid``, the
Fréchet distance between Gaussians fitted to its penultimate features of real images and of
generated ones. Validation scores one noise draw against the training images (the model
selection's number); test scores a second, independent draw against the test split, which
neither training nor selection has seen, so ``test/fid`` is held out. Each side takes as many
images as the reference has (at most ``eval_samples``): the distance is biased by sample size,
so ``val/fid`` and ``test/fid`` compare across runs, not with each other (Heusel et al. 2017, "GANs trained by a two time-scale update rule
converge to a local Nash equilibrium", with this classifier in place of Inception v3:
torchmetrics' FrechetInceptionDistance with a custom feature extractor); ``<stage>/mode_coverage``,
the number of classes the classifier assigns at least ``coverage_ratio / num_classes`` of the
generated images (the class histogram goes to ``samples/classes_<epoch>.json``); and, when
conditional, ``<stage>/label_acc``, how often it assigns a generated image the label it was
generated for. Under DDP every rank computes these on the whole sample (the work is repeated).

After every validation (not the sanity check) the first ``grid_size`` images of a fixed noise
(drawn once, kept in checkpoints) are logged as ``samples/epoch_NNN.png``, and after test as
``samples/test.png``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.functional.classification import multiclass_accuracy
from torchmetrics.image.fid import FrechetInceptionDistance

from ablab.data.module import TRAIN_EVAL, InMemory, as_batch, take
from ablab.data.noise import noise_seed, seeded_generator
from ablab.errors import ConfigError
from ablab.registry import GAN_LOSS
from ablab.tasks.base import OptimizerFactory, Task, tested_stage
from ablab.tasks.reconstruction import image_grid
from ablab.training.callbacks import set_run_tags

# Epoch values of held-out stages are reduced over DDP ranks by torchmetrics; the sample scores
# are computed whole on every rank.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(d_loss|g_loss|d_real|d_fake|gp|d_collapsed|fid|mode_coverage|label_acc)'",
    category=PossibleUserWarning,
)

#: Scores every stage logs (mean over the epoch's images).
SCORES = ("d_loss", "g_loss", "d_real", "d_fake")
TESTED_VAL = tested_stage("val")
STAGES = ("train", "val", "test", TRAIN_EVAL, TESTED_VAL, tested_stage(TRAIN_EVAL))
#: What the task needs of a data module: images, which it maps back to pixels.
IMAGE_DATA = ("unstandardize", "example_input", "clean_train_dataloader", "num_classes")
#: Seeds of the fixed noises: the sample grid's, the Fréchet distance's at validation,
#: held-out batches', the Fréchet distance's at test (a draw selection never saw).
#: Fixed, not the run's seed: every variant and seed of a study is drawn and scored alike.
GRID_SEED, SAMPLE_SEED, HELD_OUT_SEED, TEST_SAMPLE_SEED = 0, 1, 2, 3
#: Which real images, and which noise, each sample-scoring stage uses.
SAMPLE_REFERENCE = {"val": ("train", SAMPLE_SEED), "test": ("test", TEST_SAMPLE_SEED)}
#: Images generated (and classified) at once when scoring samples.
SAMPLE_BATCH = 500


# -- the adversarial objectives -----------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """An adversarial objective on D's raw scores s (logits, or a critic's values)."""

    #: (s(real), s(generated)) -> D's loss
    discriminator: Callable[[Tensor, Tensor], Tensor]
    #: s(generated) -> G's loss
    generator: Callable[[Tensor], Tensor]
    #: whether D's loss takes the gradient penalty (WGAN-GP)
    gradient_penalty: bool = False
    #: D's loss when D wins completely (a collapse is watched near it); None: unbounded below
    floor: float | None = 0.0


def cross_entropy_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """−V = −E log σ(s_real) − E log(1 − σ(s_fake)): D's binary cross-entropy, real = 1."""
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def minimax_generator(fake: Tensor) -> Tensor:
    """E log(1 − σ(s_fake)): the game's own generator loss, which saturates when D wins."""
    return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def non_saturating_generator(fake: Tensor) -> Tensor:
    """−E log σ(s_fake): the generator maximises log D(G(z)) instead."""
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def least_squares_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """½ E (s_real − 1)² + ½ E s_fake² (LSGAN, a = 0, b = 1)."""
    return 0.5 * (real - 1).square().mean() + 0.5 * fake.square().mean()


def least_squares_generator(fake: Tensor) -> Tensor:
    """½ E (s_fake − 1)² (LSGAN, c = 1)."""
    return 0.5 * (fake - 1).square().mean()


def wasserstein_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """E s_fake − E s_real: the critic maximises the estimate E D(x) − E D(G(z)) of W₁."""
    return fake.mean() - real.mean()


def wasserstein_generator(fake: Tensor) -> Tensor:
    """−E s_fake."""
    return -fake.mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """E[(‖∇ₓ critic(x̂)‖₂ − 1)²] at x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] per sample, between real
    images x and generated x̃ (Gulrajani et al. 2017, eq. 3; its weight λ is the task's)."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    # create_graph: the penalty is itself differentiated in the critic's step
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


GAN_LOSS.register("minimax")(Objective(cross_entropy_discriminator, minimax_generator))
GAN_LOSS.register("non_saturating")(
    Objective(cross_entropy_discriminator, non_saturating_generator)
)
GAN_LOSS.register("lsgan")(Objective(least_squares_discriminator, least_squares_generator))
GAN_LOSS.register("wgan_gp")(
    Objective(wasserstein_discriminator, wasserstein_generator, gradient_penalty=True, floor=None)
)


# -- the feature classifier ---------------------------------------------------------------------
class ClassifierFeatures(nn.Module):
    """f(x) = the input of ``net``'s last linear layer for images x in [−1, 1], fed to ``net`` as
    pixels (x + 1) / 2: a trained classifier's penultimate features, in the place of Inception's
    pool3 in the FID. Frozen, and never leaves eval mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(
                f"task.classifier {type(net).__name__} has no linear layer: its features are the "
                "input of its last one"
            )
        self.net = net.requires_grad_(False).eval()
        #: read by torchmetrics' FID instead of a dummy forward
        self.num_features = linears[-1].in_features
        self._seen: list[Tensor] = []
        linears[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._seen.append(args[0])

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # the task's train() must not switch dropout or BN on

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, num_features) features and (N, classes) logits of images in [−1, 1]."""
        self._seen.clear()
        logits = self.net((images + 1) / 2)
        return self._seen.pop().flatten(1), logits

    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]


#: Data module attributes that change neither the images nor the split the classifier sees (it
#: is trained on the split in its own order and batches, from raw pixels).
NOT_DATA = frozenset(
    {"num_workers", "train_eval", "train_eval_limit", "download", "verify_checksums", "normalize",
     "trainer", "prepare_data_per_node", "allow_zero_length_dataloader_with_multiple_devices",
     "order_seed", "batch_size"}
)  # fmt: skip
#: The feature classifier's batch size.
CLASSIFIER_BATCH = 64


def describe(value: Any) -> Any:
    """A JSON-able description of a factory (a Hydra partial: its target and arguments) or of a
    config value."""
    if isinstance(value, partial):
        args = {k: describe(v) for k, v in sorted(value.keywords.items())}
        return {"target": describe(value.func), "args": args, "positional": describe(value.args)}
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value if isinstance(value, bool | int | float | str | None) else str(value)


def data_identity(datamodule: Any) -> dict[str, Any]:
    """The data module's class and every plain setting of it that changes the images or the
    split (the class count, size, split seed and fractions, the dataset and its root...)."""
    settings = {
        key: describe(value)
        for key, value in sorted(vars(datamodule).items())
        if not key.startswith("_")
        and key not in NOT_DATA
        and isinstance(value, bool | int | float | str | Path | None)
    }
    name = getattr(datamodule, "name", None)  # often a class attribute
    return {"class": describe(type(datamodule)), "name": describe(name), **settings}


@contextlib.contextmanager
def quiet_lightning():
    """Lightning's start-up lines and hints off while the classifier trains, inside a run."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class FeatureClassifier:
    """A classifier of the data's images, trained once per data and settings and cached on disk:
    the feature extractor of the task's Fréchet distance and mode coverage.

    ``net()`` builds it (a Hydra partial: ``task.classifier.net``); :meth:`load` trains it on the
    training split (pixels in [0, 1], no augmentation) for ``steps`` steps of Adam(``lr``) in
    batches of :data:`CLASSIFIER_BATCH`, from weights and an order drawn with ``seed``, with a
    Lightning Trainer on the CPU, the first time; afterwards it reads it back from ``cache_dir``.
    The cache key hashes the data (:func:`data_identity`), the net's factory and these settings,
    so every run on the same data and split shares one classifier whatever its order seed and
    batch size. The split is part of the data: runs whose ``seeds.split`` differs (by default
    ``seed``) train one classifier each, and the spread of their Fréchet distances then includes
    the feature extractors'; a GAN study that compares seeds fixes ``seeds.split``.
    """

    def __init__(
        self,
        net: Callable[[], nn.Module],
        steps: int = 1000,
        lr: float = 0.001,
        seed: int = 0,
        cache_dir: str = "cache/feature_classifiers",
    ) -> None:
        if steps < 1 or not lr > 0:
            raise ConfigError(
                f"task.classifier.steps={steps} must be at least 1 and task.classifier.lr={lr} "
                "positive"
            )
        self.net, self.steps, self.lr, self.seed = net, steps, lr, seed
        self.cache_dir = Path(cache_dir)

    def spec(self, datamodule: Any) -> dict[str, Any]:
        """What the classifier depends on: the cache key is its hash."""
        return {"data": data_identity(datamodule), "net": describe(self.net), "steps": self.steps,
                "batch_size": CLASSIFIER_BATCH, "lr": self.lr, "seed": self.seed,
                "version": 1}  # fmt: skip

    def load(self, datamodule: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The trained classifier (in eval mode) and its info: ``path``, ``test_acc`` (on the
        test split), ``key`` and the spec. A lock on the cache entry makes parallel jobs (a
        sweep, DDP ranks) train it once. The run's random streams are left as they were: its
        draws do not depend on whether the classifier was cached."""
        spec = self.spec(datamodule)
        key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = f"{spec['data']['name'] or 'data'}-{key}"
        weights, info_path = self.cache_dir / f"{name}.pt", self.cache_dir / f"{name}.json"
        with open(self.cache_dir / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process trains it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = self.net()
                if weights.exists() and info_path.exists():
                    state = torch.load(weights, map_location="cpu", weights_only=True)
                    net.load_state_dict(state)
                    return net.eval(), json.loads(info_path.read_text())
                print(f"ablab: training the feature classifier for task.fid ({self.steps} "
                      f"steps), cached as {weights}", file=sys.stderr)  # fmt: skip
                test_acc = self.train(net, datamodule)
            info = {"path": str(weights), "test_acc": test_acc, "key": key, **spec}
            # each file whole when it appears (written beside it, then renamed), weights first
            for path, write in ((weights, lambda f: torch.save(net.state_dict(), f)),
                                (info_path, lambda f: f.write_text(json.dumps(info, indent=2)))):  # fmt: skip
                staged = path.with_name(f".{path.name}.{os.getpid()}")
                write(staged)
                staged.replace(path)
        return net.eval(), info

    def train(self, net: nn.Module, datamodule: Any) -> float:
        """Fit ``net`` with a Lightning Trainer; its accuracy on the test split."""
        from ablab.tasks.classifier import ClassifierModule

        module = ClassifierModule(
            net,
            optimizer=partial(torch.optim.Adam, lr=self.lr),
            scheduler=None,
            loss=nn.CrossEntropyLoss(),
            num_classes=datamodule.num_classes,
        )
        with quiet_lightning():
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, max_steps=self.steps, max_epochs=-1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, limit_val_batches=0,
            )  # fmt: skip
            # pixels in [0, 1] (not the data module's transfer hook), in an order of its own
            trainer.fit(module, train_dataloaders=training_loader(datamodule, self.seed))
            test = datamodule.test_dataloader()["test"]
            (scores,) = trainer.test(module, dataloaders=test, verbose=False)
        return float(scores["test/acc"])


def training_loader(datamodule: Any, seed: int) -> DataLoader:
    """The training split shuffled by a generator seeded with ``seed``, in batches of
    :data:`CLASSIFIER_BATCH`: the classifier's data, whatever the run's order and batch size."""
    train = datamodule.splits["train"]
    return DataLoader(
        train,
        batch_size=CLASSIFIER_BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=as_batch if isinstance(train, InMemory) else None,  # batches, already collated
    )


@dataclass
class Reference:
    """The Fréchet distance against one split's real images (their features taken once)."""

    frechet: FrechetInceptionDistance
    samples: int  #: real images in the reference, and generated images scored against it


@dataclass
class SampleScorer:
    """The feature classifier and, per real split, the Fréchet distance on its features; kept
    out of the task's module tree: never trained or switched to train mode, not in checkpoints
    (the cache holds the classifier), moved to the task's device when used."""

    features: ClassifierFeatures
    #: split -> its reference, built on first use (once per process)
    references: dict[str, Reference] = field(default_factory=dict)


class WithLabels(nn.Module):
    """net(x, y) with fixed labels y, for a check that calls a net on one input."""

    def __init__(self, net: nn.Module, y: Tensor | None) -> None:
        super().__init__()
        self.net, self.y = net, y

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.y)


# -- the task -----------------------------------------------------------------------------------
class GANModule(Task):
    """D steps on loss_D(D(x), D(G(z)).detach()) [+ λ·GP], G steps every n_critic batches on
    loss_G(D(G(z))); images in [−1, 1]."""

    networks: ClassVar[dict[str, str]] = {
        "generator": "generator",
        "discriminator": "discriminator",
    }

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        num_classes: int,
        latent_size: int = 100,
        loss: str = "non_saturating",
        n_critic: int = 1,
        gp_weight: float = 10.0,
        conditional: bool = False,
        grid_size: int = 64,
        fid: bool = True,
        eval_samples: int = 2000,
        coverage_ratio: float = 0.25,
        classifier: FeatureClassifier | None = None,
        collapse_steps: int = 200,
        collapse_threshold: float = 0.01,
        collapse_stop: bool = False,
        monitor: str = "val/fid",
        mode: Literal["min", "max"] = "min",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer", "scheduler", "classifier"],
            logger=False,
        )
        try:
            self.objective: Objective = GAN_LOSS[loss]
        except ConfigError as err:
            raise ConfigError(f"task.loss: {err}") from None
        for key, value, low in (("latent_size", latent_size, 1), ("n_critic", n_critic, 1),
                                ("grid_size", grid_size, 0), ("collapse_steps", collapse_steps, 0),
                                ("eval_samples", eval_samples, 2),
                                ("num_classes", num_classes, 2)):  # fmt: skip
            if value < low:
                raise ConfigError(f"task.{key}={value} must be at least {low}")
        if gp_weight < 0 or not 0 <= coverage_ratio <= num_classes:
            raise ConfigError(
                f"task.gp_weight={gp_weight} must be >= 0 and task.coverage_ratio="
                f"{coverage_ratio} in [0, num_classes]"
            )
        if fid and classifier is None:
            raise ConfigError("task.fid=true needs a task.classifier")
        # Two optimizers stepped in turn: Lightning's manual optimization.
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.num_classes, self.latent_size, self.loss = num_classes, latent_size, loss
        self.n_critic, self.gp_weight, self.conditional = n_critic, gp_weight, conditional
        self.grid_size, self.fid, self.eval_samples = grid_size, fid, eval_samples
        self.coverage_ratio = coverage_ratio
        self.classifier = classifier
        self.collapse_steps, self.collapse_threshold = collapse_steps, collapse_threshold
        self.collapse_stop = collapse_stop
        for stage in STAGES:  # attributes (not a ModuleDict: "train" is a Module method)
            scores = MetricCollection({k: MeanMetric() for k in SCORES}, prefix=f"{stage}/")
            setattr(self, f"{stage}_scores", scores)
        self.train_gp = MeanMetric()
        # Counters and the fixed noise are buffers: checkpoints carry them, a resumed run goes on.
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))  # batches trained
        self.register_buffer("collapse_run", torch.zeros((), dtype=torch.long))
        self.register_buffer("collapsed", torch.zeros((), dtype=torch.long))
        grid = seeded_generator(GRID_SEED)
        self.register_buffer("grid_noise", torch.randn(grid_size, latent_size, generator=grid))
        self.register_buffer("grid_labels", torch.arange(grid_size) % num_classes)
        # Bound in check(): the data, and with fid the classifier's features and the distance.
        self._data: Any = None
        self.classifier_info: dict[str, Any] | None = None
        self.scorer: SampleScorer | None = None
        self._info_logged = False

    # -- what the core asks --------------------------------------------------------------------
    def example_inputs(self, datamodule: Any) -> dict[str, Any]:
        """G takes noise (and labels), D images (and labels)."""
        z, x = torch.zeros(2, self.latent_size), datamodule.example_input()
        if not self.conditional:
            return {"generator": z, "discriminator": x}
        y = torch.zeros(2, dtype=torch.long)
        return {"generator": (z, y), "discriminator": (x, y)}

    def check_callbacks(self, callbacks: dict[str, pl.Callback]) -> None:
        """Per-layer diagnostics and the inference benchmark call the task on data batches; a
        GAN's two networks take noise and images, and the task itself nothing."""
        from ablab.training.benchmark import InferenceBenchmark
        from ablab.training.diagnostics import LayerDiagnostics

        for name, callback in callbacks.items():
            if isinstance(callback, LayerDiagnostics | InferenceBenchmark):
                raise ConfigError(
                    f"callbacks.{name} ({type(callback).__name__}) runs the task on data "
                    "batches, which a GAN's generator and discriminator do not both take; use "
                    f"callbacks=default or callbacks.{name}=null"
                )

    def check(self, datamodule: Any) -> None:
        """Image data without corruption or mixing; nets that fit it, and each other; a critic
        without batch norm under ``wgan_gp``; then, with ``fid``, the feature classifier (trained
        or read from its cache) and the Fréchet distance on it."""
        if not all(hasattr(datamodule, name) for name in IMAGE_DATA):
            raise ConfigError(
                "task=gan needs image data (data=digits|mnist|fashion_mnist|cifar10|cifar100|"
                f"synthetic|image_folder); {type(datamodule).__name__} yields no images"
            )
        corruption = getattr(datamodule, "corruption", None)
        if corruption is not None and corruption.active:
            raise ConfigError(
                f"data.noise={corruption.kind} is read by task=reconstruction only; task=gan "
                "learns the clean images: set data.noise=null"
            )
        augmentation = getattr(datamodule, "augmentation", None)
        if getattr(augmentation, "mix", None) is not None:
            raise ConfigError(
                "the augmentation mixes images (mixup/CutMix): task=gan would learn blends as "
                "real images; use an augmentation without mix"
            )
        if self.objective.gradient_penalty and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.discriminator.modules()
        ):
            raise ConfigError(
                f"task.loss={self.loss} penalises the critic's gradient for each image, which "
                "batch norm couples across the batch (Gulrajani et al. 2017): use "
                "discriminator.norm=none (or ln, gn)"
            )
        if datamodule.num_classes != self.num_classes:
            raise ConfigError(
                f"task.num_classes={self.num_classes} but the data has {datamodule.num_classes}"
            )
        for key, net in (("generator", self.generator), ("discriminator", self.discriminator)):
            classes = getattr(net, "num_classes", 0)
            if bool(classes) != self.conditional or (classes and classes != self.num_classes):
                raise ConfigError(
                    f"{key}.num_classes={classes} does not fit task.conditional="
                    f"{str(self.conditional).lower()} with {self.num_classes} classes: a "
                    f"conditional GAN's nets take num_classes={self.num_classes}, an "
                    "unconditional one's 0"
                )
        x = datamodule.example_input()
        y = torch.zeros(len(x), dtype=torch.long) if self.conditional else None
        z = torch.zeros(len(x), self.latent_size)
        made = self.dry_output_shape(WithLabels(self.generator, y), z)
        if made != tuple(x.shape):
            raise ConfigError(
                f"generator output {made} is not the data's image shape {tuple(x.shape)}: "
                "give it the data's channels and image size"
            )
        scores = self.dry_output_shape(WithLabels(self.discriminator, y), x)
        if scores != (len(x),):
            raise ConfigError(
                f"discriminator output {scores} is not one score per image ({len(x)},)"
            )
        self._data = datamodule
        if self.fid:
            net, self.classifier_info = self.classifier.load(datamodule)
            missing = sorted({split for split, _ in SAMPLE_REFERENCE.values()} - set(
                getattr(datamodule, "splits", {})))  # fmt: skip
            if missing:
                raise ConfigError(
                    f"task.fid=true scores generated images against the data's {missing} "
                    f"split(s), which data={type(datamodule).__name__} lacks; set task.fid=false"
                )
            self.scorer = SampleScorer(ClassifierFeatures(net))

    def validation_metric_names(self) -> set[str]:
        names = {f"{stage}/{key}" for stage in ("val", TRAIN_EVAL) for key in SCORES}
        return names | {f"val/{key}" for key in self._sample_score_names()}

    def training_metric_names(self) -> set[str]:
        names = {f"train/{key}" for key in SCORES} | {"train/d_collapsed"}
        return names | ({"train/gp"} if self.objective.gradient_penalty else set())

    def _sample_score_names(self) -> list[str]:
        if not self.fid:
            return []
        return ["fid", "mode_coverage"] + (["label_acc"] if self.conditional else [])

    # -- optimizers ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """G's optimizer, then D's, both from the optimizer partial; each with its own scheduler
        (stepped by the task, :meth:`_step_schedulers`)."""
        optimizers = [
            self.optimizer_factory([{"params": list(net.parameters()), "name": name}])
            for name, net in (("generator", self.generator), ("discriminator", self.discriminator))
        ]
        if not self.scheduler_config:
            return optimizers
        make = self.scheduler_config["scheduler"]
        if isinstance(make, partial) and make.keywords.get("total_steps", 0) is None:
            make = partial(make, total_steps=self._total_steps())  # one-cycle spans the run
        # only the scheduler: its interval and frequency are the task's to follow (Lightning
        # ignores them under manual optimization)
        return [{"optimizer": opt, "lr_scheduler": {"scheduler": make(opt)}} for opt in optimizers]

    def _step_schedulers(self, interval: str) -> None:
        """Step both schedulers at the end of a batch (``interval=step``) or of an epoch, every
        ``frequency`` of them; a plateau scheduler on its monitored metric, when logged."""
        config = self.scheduler_config
        if not config or config.get("interval", "epoch") != interval:
            return
        count = int(self.d_steps) if interval == "step" else self.current_epoch + 1
        if count % int(config.get("frequency", 1)):
            return
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(config.get("monitor"))
                if value is not None:
                    scheduler.step(value)
            else:
                scheduler.step()

    # -- steps ---------------------------------------------------------------------------------
    def to_images(self, x: Tensor) -> Tensor:
        """A standardised batch as G's images: pixels in [0, 1] mapped to [−1, 1]."""
        return self._data.unstandardize(x).clamp(0.0, 1.0) * 2 - 1

    def labels(self, y: Tensor) -> Tensor | None:
        return y if self.conditional else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        g_opt, d_opt = self.optimizers()
        x, y = batch
        real, labels = self.to_images(x), self.labels(y)
        scores = self.stage_scores("train")
        with self.toggled_optimizer(d_opt):  # G's parameters take no gradient here
            fake = self.generator(self.noise(len(real)), labels).detach()
            s_real, s_fake = self.discriminator(real, labels), self.discriminator(fake, labels)
            d_loss = self.objective.discriminator(s_real, s_fake)
            total = d_loss
            if self.objective.gradient_penalty:
                penalty = gradient_penalty(
                    lambda images: self.discriminator(images, labels), real, fake
                )
                total = d_loss + self.gp_weight * penalty
                self.train_gp.update(penalty.detach(), len(real))
            d_opt.zero_grad()
            self.manual_backward(total)
            d_opt.step()
            # None, not zeros: the G step's gradient norm (and memory) holds G's gradients alone
            d_opt.zero_grad(set_to_none=True)
        # Out of place: a state dict taken earlier (a checkpoint being written) keeps its count.
        self.d_steps = self.d_steps + 1
        n = len(real)
        scores["d_loss"].update(d_loss.detach(), n)
        scores["d_real"].update(s_real.detach().mean(), n)
        scores["d_fake"].update(s_fake.detach().mean(), n)
        out = {"loss": total.detach(), "d_loss": d_loss.detach()}
        if int(self.d_steps) % self.n_critic == 0:
            with self.toggled_optimizer(g_opt):  # D's parameters take no gradient here
                g_loss = self.objective.generator(
                    self.discriminator(self.generator(self.noise(n), labels), labels)
                )
                g_opt.zero_grad()
                self.manual_backward(g_loss)
                g_opt.step()
                g_opt.zero_grad(set_to_none=True)
            scores["g_loss"].update(g_loss.detach(), n)
            out["g_loss"] = g_loss.detach()
            out["loss"] = out["loss"] + out["g_loss"]  # NaN in either stops the run
        self._watch_collapse(d_loss.detach())
        if self.trainer._logger_connector.should_update_logs:
            shown = {f"train/{k}_step": v for k, v in out.items() if k != "loss"}
            self.log_dict(shown, on_step=True, on_epoch=False, prog_bar=True)
        self._step_schedulers("step")
        return out

    def stage_scores(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_scores")

    def noise(self, n: int) -> Tensor:
        """z ~ N(0, I), (n, latent_size), from the global stream (restored on resume)."""
        return torch.randn(n, self.latent_size, device=self.device)

    def _watch_collapse(self, d_loss: Tensor) -> None:
        """Count D steps in a row whose loss is within ``collapse_threshold`` of its floor; at
        ``collapse_steps`` tag the run once (and stop with ``collapse_stop``)."""
        floor = self.objective.floor
        if not self.collapse_steps or floor is None or int(self.collapsed):
            return
        # One decision for every rank (the mean of their losses): a rank that stopped alone
        # would leave the others waiting in their next collective.
        d_loss = self.trainer.strategy.reduce(d_loss, reduce_op="mean")
        near = bool(d_loss < floor + self.collapse_threshold)
        self.collapse_run = self.collapse_run + 1 if near else torch.zeros_like(self.collapse_run)
        if int(self.collapse_run) < self.collapse_steps:
            return
        self.collapsed = torch.ones_like(self.collapsed)
        set_run_tags(
            self.trainer,
            {
                "d_collapsed": f"step {self.trainer.global_step}: discriminator loss below "
                f"{self.collapse_threshold} for {self.collapse_steps} steps"
            },
        )
        if self.collapse_stop:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        self._log_scores("train")
        values = {"train/d_collapsed": self.collapsed.float()}
        if self.objective.gradient_penalty and self.train_gp.update_called:
            values["train/gp"] = self.train_gp.compute()
        self.log_dict(values)
        self.train_gp.reset()
        self._step_schedulers("epoch")

    def _score(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str, split: str) -> None:
        """Held-out scores of a real batch and as many generated images, from a noise seeded by
        (split, rank, batch): the same at every epoch."""
        x, y = batch
        real, labels = self.to_images(x), self.labels(y)
        draws = seeded_generator(noise_seed(HELD_OUT_SEED, split, self.global_rank, batch_idx))
        z = torch.randn(len(real), self.latent_size, generator=draws).to(self.device)
        s_real = self.discriminator(real, labels)
        s_fake = self.discriminator(self.generator(z, labels), labels)
        scores, n = self.stage_scores(stage), len(real)
        scores["d_loss"].update(self.objective.discriminator(s_real, s_fake), n)
        scores["g_loss"].update(self.objective.generator(s_fake), n)
        scores["d_real"].update(s_real.mean(), n)
        scores["d_fake"].update(s_fake.mean(), n)

    def _log_scores(self, stage: str) -> None:
        """Log the stage's epoch scores (those updated: an epoch may take no G step) and reset."""
        scores = self.stage_scores(stage)
        values = {
            f"{stage}/{key}": metric.compute()
            for key, metric in scores.items(keep_base=True)
            if metric.update_called
        }
        self.log_dict(values, prog_bar=stage in ("train", "val"))
        scores.reset()

    def on_validation_epoch_start(self) -> None:
        self._validation_sets = self.validation_sets()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._validation_sets[dataloader_idx]
        self._score(batch, batch_idx, name, name)

    def on_validation_epoch_end(self) -> None:
        for name in self._validation_sets:
            self._log_scores(name)
        if self.trainer.sanity_checking:
            return
        if self.fid:
            self._score_samples("val", f"epoch_{self.current_epoch:03d}")
        self._log_grid(f"samples/epoch_{self.current_epoch:03d}.png")

    def on_test_epoch_start(self) -> None:
        self._test_splits = self.test_sets()
        self._test_stages = [tested_stage(name) for name in self._test_splits]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(
            batch, batch_idx, self._test_stages[dataloader_idx], self._test_splits[dataloader_idx]
        )

    def on_test_epoch_end(self) -> None:
        for stage in self._test_stages:
            self._log_scores(stage)
        if self.fid:
            self._score_samples("test", "test")
        self._log_grid("samples/test.png")

    # -- generated samples ---------------------------------------------------------------------
    def _mlflow(self) -> MLFlowLogger | None:
        logger = self.logger
        return logger if self.trainer.is_global_zero and isinstance(logger, MLFlowLogger) else None

    @torch.no_grad()
    def generate(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """G(z) in eval mode (batch norm's running statistics), mode restored."""
        training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(
                z.to(self.device), None if labels is None else labels.to(self.device)
            )
        finally:
            self.generator.train(training)

    def _log_grid(self, artifact: str) -> None:
        logger = self._mlflow()
        if not self.grid_size or logger is None:
            return
        labels = self.grid_labels if self.conditional else None
        pixels = ((self.generate(self.grid_noise, labels) + 1) / 2).clamp(0, 1).cpu()
        width = self.num_classes if self.conditional else 8  # a conditional row: one per class
        rows = list(pixels.split(width))
        logger.experiment.log_image(logger.run_id, image_grid(rows), artifact_file=artifact)

    @torch.no_grad()
    def _reference(self, split: str) -> Reference:
        """The Fréchet distance with the real side filled from ``split``: a seeded uniform draw
        of ``eval_samples`` images (all of them when the split is smaller), once per process."""
        scorer = self.scorer
        if split in scorer.references:
            return scorer.references[split]
        # real features are taken once; only the generated ones are renewed
        frechet = FrechetInceptionDistance(
            feature=scorer.features, reset_real_features=False, sync_on_compute=False
        ).to(self.device)
        # A seeded uniform draw, not the first images in stored order (an image folder's
        # training split is sorted by class).
        images = self._data.splits[split]
        count = min(self.eval_samples, len(images))
        keep = torch.randperm(len(images), generator=seeded_generator(SAMPLE_SEED))[:count]
        keep = keep.sort().values
        drawn = (
            take(images, keep)
            if isinstance(images, TensorDataset | Subset)
            else Subset(images, keep.tolist())
        )
        collate = as_batch if isinstance(drawn, InMemory) else None  # already batches
        for x, _ in DataLoader(drawn, SAMPLE_BATCH, collate_fn=collate):  # pixels in [0, 1]
            frechet.update(x.to(self.device) * 2 - 1, real=True)
        scorer.references[split] = Reference(frechet, count)
        return scorer.references[split]

    @torch.no_grad()
    def _score_samples(self, stage: str, name: str) -> None:
        """Fréchet distance, mode coverage (and label accuracy) of images generated from a fixed
        noise against the stage's reference split (:data:`SAMPLE_REFERENCE`), as many generated
        images as real ones: the distance is biased by sample size."""
        split, seed = SAMPLE_REFERENCE[stage]
        reference, features = self._reference(split), self.scorer.features
        frechet = reference.frechet.to(self.device)
        draws = seeded_generator(seed)
        predicted, wanted = [], []
        for start in range(0, reference.samples, SAMPLE_BATCH):
            n = min(SAMPLE_BATCH, reference.samples - start)
            z = torch.randn(n, self.latent_size, generator=draws)
            labels = torch.arange(start, start + n) % self.num_classes  # every class alike
            images = self.generate(z, labels if self.conditional else None)
            frechet.update(images, real=False)
            predicted.append(features.features_and_logits(images)[1].argmax(1).cpu())
            wanted.append(labels)
        distance = frechet.compute()
        frechet.reset()  # the generated side only (reset_real_features=False)
        predicted = torch.cat(predicted)
        counts = torch.bincount(predicted, minlength=self.num_classes)
        share = counts.float() / len(predicted)
        values = {
            f"{stage}/fid": distance.float(),
            f"{stage}/mode_coverage": (share >= self.coverage_ratio / self.num_classes)
            .sum()
            .float(),
        }
        if self.conditional:
            values[f"{stage}/label_acc"] = multiclass_accuracy(
                predicted, torch.cat(wanted), self.num_classes, average="micro"
            )
        self.log_dict(values, prog_bar=stage == "val")
        logger = self._mlflow()
        if logger is not None:
            names = getattr(self._data, "class_names", [str(c) for c in range(self.num_classes)])
            histogram = {
                "samples": len(predicted),
                "counts": dict(zip(names, counts.tolist(), strict=False)),
            }
            logger.experiment.log_dict(logger.run_id, histogram, f"samples/classes_{name}.json")

    # -- the classifier's record ---------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._log_classifier()

    def on_test_start(self) -> None:
        self._log_classifier()

    def _log_classifier(self) -> None:
        """Tag the run with the feature classifier's file and test accuracy, and log its info;
        tags, not params: a resumed run compares its params with the config."""
        logger = self._mlflow()
        if logger is None or self.classifier_info is None or self._info_logged:
            return
        info = self.classifier_info
        set_run_tags(
            self.trainer,
            {
                "feature_classifier.path": info["path"],
                "feature_classifier.test_acc": f"{info['test_acc']:.4f}",
            },
        )
        logger.experiment.log_dict(logger.run_id, info, "feature_classifier/info.json")
        self._info_logged = True
