"""How many torch intra-op threads a training process uses: its share of the cores.

torch starts one OpenMP thread per core in every process. Several processes at once (parallel
sweep jobs, DDP ranks on CPU) then each take every core, and their threads spin against each
other: a hand-written training loop's step went from 16.7 ms with one thread to 212 ms with two
while other processes were busy. So each process gets ``cores // concurrent processes``
threads unless the user says otherwise (``trainer.threads``):

1. ``trainer.threads`` = a positive integer: that (``user``);
2. ``OMP_NUM_THREADS`` set in the environment: that (``omp_env``);
3. inside a SLURM job, ``SLURM_CPUS_PER_TASK`` (``slurm``);
4. in a Hydra multirun on the joblib launcher, ``max(1, cores // concurrent jobs)``, divided
   further by the processes of each job (``joblib``);
5. with several processes per job (DDP, ``trainer.devices`` N), ``max(1, cores // N)`` (``ddp``),
   which is what Lightning's own launcher sets when nothing else does;
6. otherwise torch's default (``default``).

"cores" are the CPUs this process may run on (``os.sched_getaffinity``), not the machine's.
joblib's process workers already get ``OMP_NUM_THREADS = cpu_count // n_jobs`` from joblib when
the user set none; that value is recognised as joblib's (not the user's), and the budget adds
what joblib cannot know: fewer jobs in the sweep than ``n_jobs``, and DDP ranks within a job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from ablab.errors import ConfigError

#: torch's own choice in this process, before ablab set anything (restored for a job without
#: a budget when an earlier job in the same process, a joblib worker, set one).
TORCH_DEFAULT = torch.get_num_threads()
OMP_ENV = "OMP_NUM_THREADS"
#: The ``OMP_NUM_THREADS`` this process exported itself: not the user's setting.
_exported: str | None = None


@dataclass(frozen=True)
class ThreadBudget:
    """The intra-op thread count a job runs with, and where it came from."""

    threads: int
    #: user | omp_env | slurm | joblib | ddp | default
    source: str

    def params(self) -> dict[str, str]:
        """Run params: machine facts, never part of the config or its fingerprint."""
        return {"runtime.torch_threads": str(self.threads),
                "runtime.torch_threads_source": self.source}  # fmt: skip


def resolve_threads(
    setting: Any,
    env: Mapping[str, str],
    cores: int,
    *,
    n_jobs: int | None = None,
    sweep_size: int | None = None,
    processes: int = 1,
) -> tuple[int | None, str]:
    """``(threads, source)`` for one process; ``threads`` None means torch's default.

    ``setting`` is ``trainer.threads``; ``n_jobs`` the joblib launcher's (None outside a joblib
    multirun; negative counts back from the cores as joblib does: -1 all, -2 all but one);
    ``sweep_size`` the number of jobs in the sweep when known (fewer jobs than ``n_jobs`` run
    fewer at once); ``processes`` the processes each job runs (DDP ranks on this node).
    """
    if setting is not None:
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ConfigError(
                f"trainer.threads={setting}: expected a positive integer (torch threads per "
                "process) or null (automatic: a share of the cores)"
            )
        return setting, "user"
    for name, source in ((OMP_ENV, "omp_env"), ("SLURM_CPUS_PER_TASK", "slurm")):
        if (count := _positive_int(env.get(name, ""))) is not None:
            return count, source
    if n_jobs is not None:
        jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib's negative n_jobs
        if sweep_size:
            jobs = min(jobs, sweep_size)
        return max(1, cores // (jobs * processes)), "joblib"
    if processes > 1:
        return max(1, cores // processes), "ddp"
    return None, "default"


def apply_threads(cfg: DictConfig) -> ThreadBudget:
    """Resolve the job's budget from its config, environment and launcher, and apply it
    (``torch.set_num_threads``); raise ConfigError for a bad ``trainer.threads``."""
    global _exported
    env, launcher = dict(os.environ), joblib_launcher()
    if _exported is not None and env.get(OMP_ENV) == _exported:
        env.pop(OMP_ENV)  # a previous job in this process exported it, not the user
    if "n_jobs" in launcher and env.get(OMP_ENV) == joblib_worker_threads(launcher["n_jobs"]):
        env.pop(OMP_ENV)  # joblib's own cap for its workers, not the user's setting
    processes = processes_per_job(cfg.trainer.get("devices"))
    threads, source = resolve_threads(
        cfg.trainer.get("threads"), env, available_cores(), processes=processes, **launcher
    )
    torch.set_num_threads(threads or TORCH_DEFAULT)
    if processes > 1 and source in ("user", "slurm", "joblib"):
        # Lightning's DDP launchers set OMP_NUM_THREADS (and torch's count) to cores // ranks
        # when it is unset; exported, it keeps this budget and reaches the ranks it starts.
        os.environ[OMP_ENV] = _exported = str(threads)
    return ThreadBudget(torch.get_num_threads(), source)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: what ``taskset``, cgroups-aware
    launchers and SLURM's binding leave it), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS, Windows: no affinity API


def joblib_launcher() -> dict[str, int | None]:
    """``n_jobs`` and ``sweep_size`` for :func:`resolve_threads` in a joblib multirun, else {}."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.get("launcher") or {}
    joblib = str(launcher.get("_target_", "")).endswith("JoblibLauncher")
    if hydra_cfg.mode != RunMode.MULTIRUN or not joblib:
        return {}
    from ablab.tracking.sweep import sweep_info  # a multirun only: the sweep's planned jobs

    jobs = (sweep_info(str(hydra_cfg.sweep.dir)) or {}).get("jobs")
    return {"n_jobs": int(launcher.get("n_jobs") or 1), "sweep_size": len(jobs) if jobs else None}


def joblib_worker_threads(n_jobs: int) -> str:
    """The ``OMP_NUM_THREADS`` joblib's process workers get when the user set none:
    ``cpu_count // n_jobs`` with joblib's own (cgroup-aware) CPU count."""
    from joblib import cpu_count

    jobs = n_jobs if n_jobs > 0 else max(1, cpu_count() + 1 + n_jobs)
    return str(max(cpu_count() // jobs, 1))


def processes_per_job(devices: Any) -> int:
    """Processes one job runs on this node: ``trainer.devices`` as a count or a list of
    indices; ``auto`` and -1 (every device, unknown until the Trainer looks) count as one."""
    if isinstance(devices, list | tuple | ListConfig):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    count = _positive_int(str(devices))
    return count or 1


def _positive_int(text: str) -> int | None:
    """``"4"`` and OpenMP's nested ``"4,2"`` -> 4; empty, ``"auto"``, ``"0"``, ``"-1"`` -> None."""
    first = text.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None
