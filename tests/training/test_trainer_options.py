"""The ``trainer`` group: every option builds (or names why not here), precision, channels-last,
torch.compile and deterministic switches do what they say, system metrics reach the run."""

from __future__ import annotations

import os

import pytest
import torch
from mlflow import MlflowClient
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn

from ablab.errors import ConfigError
from ablab.training.lifecycle import train
from ablab.training.run import RUNTIME_KEYS, build
from conftest import CONF, tracking_uri

FAST = [
    "trainer=smoke",
    "callbacks.batch_preview=null",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "logger.log_model=false",
]
OPTIONS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
NEEDS_GPU = {"gpu", "ddp"}


def first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", OPTIONS)
def test_every_trainer_option_builds(name, compose_cfg) -> None:
    with compose_cfg(f"trainer={name}") as cfg:
        assert set(RUNTIME_KEYS) <= set(cfg.trainer)  # the switches exist on every option
        if name in NEEDS_GPU and not torch.cuda.is_available():
            with pytest.raises(ConfigError, match=r"(?i)gpu"):
                build(cfg)
            return
        trainer = build(cfg).trainer
    expected = {"cpu": 1, "default": 1, "smoke": 1, "ddp_cpu": 2}.get(name)
    assert trainer.world_size == expected or name in NEEDS_GPU


def test_ddp_option_is_multi_gpu_ddp_with_a_sync_bn_switch(compose_cfg) -> None:
    with compose_cfg("trainer=ddp", "trainer.devices=4", "trainer.sync_batchnorm=true") as cfg:
        t = cfg.trainer
        assert (t.accelerator, t.devices, t.strategy, t.sync_batchnorm) == ("gpu", 4, "ddp", True)


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_fp16_on_cpu_is_refused_before_the_run(precision, compose_cfg, root) -> None:
    bad = pytest.raises(ConfigError, match=f"trainer.precision={precision} needs a GPU.*bf16-mixed")
    with compose_cfg(*FAST, f"trainer.precision={precision}") as cfg, bad:
        build(cfg)
    client = MlflowClient(tracking_uri(root))
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_bf16_mixed_trains_in_bfloat16_on_cpu(compose_cfg) -> None:
    with compose_cfg(*FAST, "trainer.precision=bf16-mixed", "trainer.limit_train_batches=1") as cfg:
        run = build(cfg)
        dtypes: list[torch.dtype] = []
        first_conv(run.task.net).register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        run.trainer.fit(run.task, datamodule=run.datamodule)
    plugin = run.trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.device == "cpu"
    assert run.trainer.global_step == 1
    assert dtypes and set(dtypes) == {torch.bfloat16}  # autocast ran the convs in bf16
    assert torch.isfinite(run.trainer.callback_metrics["train/loss"])
    assert {p.dtype for p in run.task.parameters()} == {torch.float32}  # fp32 master weights


@pytest.mark.parametrize(
    ("precision", "native", "warned"),
    [
        ("bf16-mixed", False, True),
        ("bf16-true", False, True),
        ("bf16-mixed", True, False),
        ("32-true", False, False),
    ],
)
def test_bf16_on_a_cpu_without_bf16_hardware_warns_before_the_run(
    precision, native, warned, compose_cfg, root, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("ablab.training.precision.cpu_has_native_bf16", lambda: native)
    with compose_cfg(*FAST, f"trainer.precision={precision}") as cfg:
        build(cfg)
    lines = [line for line in capsys.readouterr().err.splitlines() if "bf16" in line]
    assert len(lines) == warned, lines
    if warned:
        assert lines[0].startswith(f"ablab: warning: trainer.precision={precision} on a CPU")
        assert "avx512_bf16" in lines[0] and "~20x slower" in lines[0]
        assert "trainer.precision=32-true, or a GPU" in lines[0]
    client = MlflowClient(tracking_uri(root))
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),
        ("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu avx512f amx_tile amx_bf16\n", True),
        ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Linux)
        ("Features\t: fp asimd\n", False),
        (None, None),  # no /proc/cpuinfo: not Linux, unknown (no warning)
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native, tmp_path, monkeypatch) -> None:
    from ablab.training import precision

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(f"processor\t: 0\n{cpuinfo}")
    monkeypatch.setattr(precision, "CPUINFO", path)
    assert precision.cpu_has_native_bf16() is native


def test_channels_last_weights_and_batches(compose_cfg) -> None:
    with compose_cfg(*FAST, "trainer.channels_last=true", "trainer.limit_train_batches=1") as cfg:
        run = build(cfg)
        conv = first_conv(run.task.net)
        seen: list[bool] = []
        conv.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        run.trainer.fit(run.task, datamodule=run.datamodule)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen and all(seen)  # training and validation batches
    assert torch.isfinite(run.trainer.callback_metrics["train/loss"])


def test_compute_switches_are_not_trainer_arguments(compose_cfg) -> None:
    # pl.Trainer rejects unknown keyword arguments: building at all shows they were kept out
    overrides = ("trainer.compile=false", "trainer.channels_last=false")
    with compose_cfg(*FAST, *overrides, "trainer.system_metrics_interval=null") as cfg:
        run = build(cfg)
    assert run.trainer.max_epochs == 1


@pytest.mark.slow
def test_compile_trains_and_keeps_checkpoint_keys(compose_cfg) -> None:
    """~25 s on 2 CPU cores with a cold inductor cache (C++ codegen for forward and backward),
    ~7 s warm."""
    overrides = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=0")
    with compose_cfg(*FAST, *overrides) as cfg:
        eager = build(cfg)
    with compose_cfg(*FAST, *overrides, "trainer.compile=true") as cfg:
        run = build(cfg)
        run.trainer.fit(run.task, datamodule=run.datamodule)
    assert run.task.net._compiled_call_impl is not None
    assert run.trainer.global_step == 2
    assert torch.isfinite(run.trainer.callback_metrics["train/loss"])
    # measured on the eager net; compiled in place, so a checkpoint loads into an eager net
    assert run.complexity == eager.complexity
    assert run.task.state_dict().keys() == eager.task.state_dict().keys()


def test_deterministic_switch(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        with compose_cfg(*FAST, "trainer.deterministic=true") as cfg:
            build(cfg)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # what cuBLAS needs on a GPU
    finally:
        torch.use_deterministic_algorithms(False)


# "longer than the run": the monitor never completes an interval; the run still gets one sample
@pytest.mark.parametrize("interval", [0.2, 1000, None], ids=["on", "longer than the run", "off"])
def test_system_metrics_reach_the_run(interval, compose_cfg, root) -> None:
    interval_override = (
        f"trainer.system_metrics_interval={'null' if interval is None else interval}"
    )
    with compose_cfg(*FAST, interval_override) as cfg:
        train(cfg)
    client = MlflowClient(tracking_uri(root))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    system = {k for k in run.data.metrics if k.startswith("system/")}
    if interval is None:
        assert not system
    else:
        assert {
            "system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes",
        } <= system
