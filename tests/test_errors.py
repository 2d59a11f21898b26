"""Bad input: one line on stderr naming what is wrong and the valid choices; no MLflow run."""

from __future__ import annotations

import pytest

from ablab.errors import ConfigError
from ablab.training.run import build
from conftest import run_module


def _fails_cleanly(proc, root, *expected: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (root / "mlflow.db").exists(), "an MLflow store/run was created for bad input"
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=resnt18"], ["model option 'resnt18'", "lenet5"]),
        (["data=digitz"], ["data option 'digitz'", "did you mean 'digits'", "cifar10"]),
        (["trainer.max_epoch=3"], ["'trainer.max_epoch'", "did you mean 'trainer.max_epochs'"]),
        (["-m", "seed=0,1", "optimizer=adam,adamm"], ["optimizer option 'adamm'", "sgd"]),
        (["data.image_size=${nope}"], ["nope"]),
        (["seed=${oops}"], ["oops"]),
        (["task=sequence", "data=adding"], ["model=lenet5 reads data.in_channels", "data=adding"]),
        (["-m", "trainer=ddp_cpu", "seed=0,1"], ["re-run the whole sweep", "ddp_spawn"]),
        (["seed=abc"], ["seed=abc: expected int"]),
        (["-m", "seed=0,abc"], ["seed=abc: expected int"]),
        (["resume=maybe"], ["resume=maybe: expected bool"]),
        (["experiment_name=" + "x" * 600], ["experiment_name is 600 characters", "at most 500"]),
        (["logger.run_name=" + "r" * 8001], ["logger.run_name is 8001 characters", "at most 8000"]),
        (["+logger.tags.note=" + "t" * 8001], ["logger.tags.note is 8001 characters"]),
    ],
    ids=[
        "group-option",
        "close-match",
        "unknown-key",
        "sweep-value",
        "interpolation",
        "top-level-interpolation",
        "model-data-mismatch",
        "ddp-in-multirun",
        "top-level-type",
        "top-level-type-in-sweep",
        "bool-type",
        "long-experiment-name",
        "long-run-name",
        "long-tag-value",
    ],
)
def test_bad_command_line_is_one_line_before_torch(args, expected, root) -> None:
    proc = run_module(["ablab.train", *args], root, timeout=60)
    _fails_cleanly(proc, root, *expected)
    assert not (root / "outputs").exists()  # rejected before Hydra creates a run directory


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model.act=relux"], ["activation 'relux'", "did you mean 'relu'", "leaky_relu"]),
        (["model.pool=mean"], ["pool 'mean'", "avg, max"]),
        (["data=mnist"], ["MNIST/raw", "data.download=true"]),
        (["data=cifar10", "data.download=true"], ["could not download cifar10", "download=false"]),
        (["data=image_folder"], ["image_folder does not exist", "data.root"]),
        (["optimizer.lr=-1"], ["optimizer", "Invalid learning rate"]),
        (["data.num_classes=11"], ["num_classes=11", "digits has 10 classes"]),
        (["data.val_fraction=1.5"], ["val_fraction must be in (0, 1)"]),
        (["+model.depth=3"], ["unexpected keyword argument 'depth'"]),
        (["data.image_size=4"], ["Kernel size can't be greater than actual input size"]),
        (
            ["task=sequence", "data=adding", "model=lstm", "augmentation=strong"],
            [
                "AddingProblem takes no augmentation",
                "crop, hflip, jitter, erase",
                "augmentation=none",
            ],
        ),
    ],
    ids=[
        "registry-name",
        "pool",
        "missing-dataset",
        "no-network",
        "missing-folder",
        "bad-lr",
        "too-many-classes",
        "bad-fraction",
        "unknown-argument",
        "input-too-small",
        "augmentation-of-sequences",
    ],
)
def test_bad_values_fail_before_any_run(args, expected, compose_cfg, root) -> None:
    with compose_cfg("trainer=smoke", *args) as cfg, pytest.raises(ConfigError) as info:
        build(cfg)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message
    assert not (root / "mlflow.db").exists()


def test_bad_value_from_the_command_line(root) -> None:
    """The whole path: Hydra job, build, one line on stderr, exit status 2, no store."""
    proc = run_module(["ablab.train", "trainer=smoke", "model.act=relux"], root, timeout=120)
    _fails_cleanly(proc, root, "activation 'relux'", "did you mean 'relu'")


def test_augmentation_of_data_that_takes_none_from_the_command_line(root) -> None:
    """Before the run folder: an image augmentation on sequences is named, not left unresolved
    (its crop size reads the data's image size) nor ignored."""
    args = ["task=sequence", "data=adding", "model=lstm", "augmentation=basic", "trainer=smoke"]
    proc = run_module(["ablab.train", *args], root, timeout=120)
    _fails_cleanly(proc, root, "takes no augmentation", "augmentation=none")
    assert not list((root / "outputs").rglob("*.ckpt"))


def test_wrong_type_from_the_command_line(root) -> None:
    """Refused before anything is built or tracked (it used to leave a FAILED run tagged
    AssertionError); the message names the key and the type the Trainer's signature asks for."""
    proc = run_module(["ablab.train", "trainer=smoke", "trainer.max_epochs=2.5"], root)
    _fails_cleanly(
        proc, root, "trainer.max_epochs=2.5: expected int | None (pytorch_lightning.Trainer"
    )


def test_study_takes_overrides_after_options(root) -> None:
    """``make study`` runs ``ablab study NAME --size quick ARGS``: the overrides after the option
    are collected (an unknown key among them is then refused before any job starts)."""
    args = ["ablab.cli", "study", "bn_vs_nobn", "--size", "quick", "trainer.max_epoch=1"]
    proc = run_module(args, root, timeout=60)
    _fails_cleanly(proc, root, "'trainer.max_epoch'", "did you mean 'trainer.max_epochs'")
    assert not (root / "outputs").exists() and not (root / "multirun").exists()


def test_report_takes_overrides_after_options() -> None:
    from ablab.cli import report_parser

    args = report_parser().parse_intermixed_args(["s", "--no-log", "logger.tracking_uri=x", "a=1"])
    assert (args.study, args.no_log, args.overrides) == (
        "s",
        True,
        ["logger.tracking_uri=x", "a=1"],
    )


def test_glob_sweeps_pass_the_check() -> None:
    from ablab.config import check_overrides

    check_overrides(["model=glob(plain2*)", "seed=0,1"], multirun=True)  # no error
