"""Shared fixtures: every test writes runs, data and its MLflow store under its own tmp folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from omegaconf import DictConfig

from ablab.config import composed
from browser import chromium, chromium_path

#: Registered here, once: one session Playwright for every module that takes ``chromium``.
__all__ = ["chromium", "chromium_path"]

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's tracking server or writes into the checkout."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ABLAB_ROOT", str(tmp_path))


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """A test that builds a run with a thread budget (``trainer.threads``, DDP ranks) leaves
    torch's thread count and ``OMP_NUM_THREADS`` as they were for the next test."""
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., AbstractContextManager[DictConfig]]:
    """``with compose_cfg("model=lenet5", ...) as cfg``: the real config, rooted in tmp_path."""

    def make(*overrides: str) -> AbstractContextManager[DictConfig]:
        return composed(list(overrides), output_dir=str(tmp_path / "run"))

    return make


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlflow.db"


def run_module(
    args: list[str], root: Path, timeout: float = 300, extra_env: dict[str, str] | None = None, **kw
):
    """Run ``python -m ablab.train`` (or another module) in a subprocess rooted at ``root``."""
    import subprocess

    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.update(extra_env or {})
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
