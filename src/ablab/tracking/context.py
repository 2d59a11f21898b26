"""Where a run ran: git commit (and whether the tree was dirty), host, user and SLURM job, and
the hardware and library versions a report names (never the host: a committed report shows what
ran, not which machine).

Tags for every run a process creates, single runs, sweep children and sweep parents alike; torch-
and MLflow-free, so both the logger and the sweep tracker import it without importing each other.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

#: Distributions whose versions every run records as ``lib.<name>`` tags.
LIBRARIES = ("torch", "pytorch-lightning", "torchmetrics", "hydra-core", "mlflow", "timm")


def hardware_tags() -> dict[str, str]:
    """``hw.cpu`` (model), ``hw.cores`` (logical CPUs this process may use), ``hw.gpu`` (the
    NVIDIA models the driver lists, or "none"), ``python`` and ``lib.<distribution>`` versions;
    read from /proc and package metadata, without importing torch."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpus = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        model = [ln for ln in info.read_text().splitlines() if ln.startswith("Model:")]
        gpus += [model[0].split(":", 1)[1].strip()] if model else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tags = {"hw.cpu": cpu, "hw.cores": str(cores), "hw.gpu": ", ".join(gpus) or "none",
            "python": platform.python_version()}  # fmt: skip
    for dist in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            tags[f"lib.{dist}"] = importlib.metadata.version(dist)
    return tags


def run_context_tags() -> dict[str, str]:
    """git commit (and whether the tree had uncommitted changes), host, user and SLURM job."""
    tags = {"host": socket.gethostname(), "user": getpass.getuser(), **hardware_tags()}
    # On SLURM: the job (an array task as <array job>_<task>) and how often it was requeued.
    if job := os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        tags["slurm_job_id"] = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return tags
    if commit.returncode == 0:
        tags["git_commit"] = commit.stdout.strip()
        tags["mlflow.source.git.commit"] = tags["git_commit"]
        tags["git_dirty"] = str(bool(status.stdout.strip())).lower()
    return tags
