"""The torch thread budget: each training process gets its share of the cores, is told why, and
logs both; the budget is a machine fact, never part of the config a run is resumed against."""

from __future__ import annotations

import os

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Param

from ablab.config import resolved
from ablab.errors import ConfigError
from ablab.tracking import flatten_params
from ablab.training.job import JobState, fingerprint, previous_attempt
from ablab.training.run import build
from ablab.training.threads import ThreadBudget, processes_per_job, resolve_threads
from conftest import run_module, tracking_uri

FAST = [
    "trainer=smoke",
    "callbacks.batch_preview=null",
    "callbacks.model_checkpoint=null",
    "logger.log_model=false",
    "callbacks.progress_bar=null",
]
OMP = {"OMP_NUM_THREADS": "3"}
SLURM = {"SLURM_CPUS_PER_TASK": "6"}


#: case -> (trainer.threads, environment, launcher info, expected (threads, source)); 16 cores
CASES = {
    "user": (5, {**OMP, **SLURM}, {"n_jobs": 2}, (5, "user")),  # the user's value wins
    "omp": (None, {**OMP, **SLURM}, {"n_jobs": 2}, (3, "omp_env")),
    "omp-nested": (None, {"OMP_NUM_THREADS": "4,2"}, {}, (4, "omp_env")),  # the outer level
    "slurm": (None, SLURM, {"n_jobs": 2}, (6, "slurm")),
    "empty-env": (None, {"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "0"}, {}, (None, "default")),
    "joblib-2": (None, {}, {"n_jobs": 2}, (8, "joblib")),
    "joblib-minus-1": (None, {}, {"n_jobs": -1}, (1, "joblib")),  # one job per core
    "joblib-minus-2": (None, {}, {"n_jobs": -2}, (1, "joblib")),  # all cores but one: 15 jobs
    "joblib-minus-13": (None, {}, {"n_jobs": -13}, (4, "joblib")),  # 16 + 1 - 13 = 4 jobs
    "joblib-small-sweep": (None, {}, {"n_jobs": -1, "sweep_size": 2}, (8, "joblib")),
    "joblib-ddp": (None, {}, {"n_jobs": 2, "processes": 2}, (4, "joblib")),  # 2 jobs x 2 ranks
    "joblib-many": (None, {}, {"n_jobs": 32}, (1, "joblib")),  # never below one
    "ddp-cpu": (None, {}, {"processes": 2}, (8, "ddp")),  # trainer=ddp_cpu: devices 2
    "default": (None, {}, {}, (None, "default")),
}


@pytest.mark.parametrize(
    ("setting", "env", "launcher", "expected"), CASES.values(), ids=list(CASES)
)
def test_resolve_threads(setting, env, launcher, expected) -> None:
    assert resolve_threads(setting, env, 16, **launcher) == expected


@pytest.mark.parametrize(
    ("devices", "processes"),
    [(1, 1), (2, 2), ("2", 2), ([0, 1, 2], 3), ("0,1", 2), ("auto", 1), (-1, 1)],
)
def test_processes_per_job(devices, processes) -> None:
    assert processes_per_job(devices) == processes


@pytest.mark.parametrize("setting", [0, -1, "abc", 2.5, True])
def test_a_bad_setting_is_refused_in_one_line(setting) -> None:
    with pytest.raises(ConfigError, match=r"^trainer\.threads=\S+: expected a positive integer"):
        resolve_threads(setting, {}, 16)


def test_zero_threads_is_refused_before_any_run_and_leaves_no_folder(root) -> None:
    proc = run_module(["ablab.train", *FAST, "trainer.threads=0"], root, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ablab: error: trainer.threads=0: "), lines
    assert not (root / "mlflow.db").exists() and not (root / "outputs").exists()


def test_negative_threads_is_refused_before_the_run(compose_cfg, root) -> None:
    with compose_cfg(*FAST, "trainer.threads=-1") as cfg, pytest.raises(ConfigError) as info:
        build(cfg)
    assert "\n" not in str(info.value) and "null (automatic" in str(info.value)
    assert not (root / "mlflow.db").exists()


def test_a_set_budget_is_applied_before_the_networks(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: list[int] = []
    monkeypatch.setattr(
        "ablab.training.run.initialize",
        lambda net, **kw: seen.append(torch.get_num_threads()) or net,
    )
    with compose_cfg(*FAST, "trainer.threads=1") as cfg:
        run = build(cfg)
    assert run.threads == ThreadBudget(1, "user") and seen == [1]
    assert run.threads.params() == {
        "runtime.torch_threads": "1",
        "runtime.torch_threads_source": "user",
    }


def older_job(root, params: dict[str, str]) -> None:
    """A job folder ``root/job`` whose MLflow run logged ``params`` (a run from an older ablab)."""
    client = MlflowClient(tracking_uri(root))
    run = client.create_run(client.create_experiment("old"))
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    JobState(run.info.run_id, run.info.experiment_id, tracking_uri(root)).save(root / "job")


def test_the_budget_is_a_machine_fact_not_config(compose_cfg, root) -> None:
    """Logged runtime.* params are left out of the fingerprint and of the resume comparison; a
    run logged before trainer.threads existed is the same config, with the same fingerprint."""
    with compose_cfg(*FAST) as cfg:
        params = flatten_params(resolved(cfg))
    assert params["trainer.threads"] == "None"
    logged = params | ThreadBudget(2, "joblib").params()
    older = {k: v for k, v in logged.items() if k != "trainer.threads"}
    assert fingerprint(logged) == fingerprint(params) == fingerprint(older)
    assert fingerprint({**params, "trainer.threads": "2"}) != fingerprint(params)
    older_job(root, older)
    assert previous_attempt(root / "job", tracking_uri(root), params).state.run_id
    with pytest.raises(ConfigError, match=r"trainer\.threads: None -> 2"):
        previous_attempt(root / "job", tracking_uri(root), {**params, "trainer.threads": "2"})


def test_a_run_from_before_seeds_split_is_the_same_config(compose_cfg, root) -> None:
    """seeds.split was added later: a run without it split by `seed`, which is what the key's
    default does, so it is the same config with the same fingerprint; a split pinned to another
    value is a different one, named in the refusal."""
    with compose_cfg(*FAST, "seed=3") as cfg:
        params = flatten_params(resolved(cfg))
    assert params["seeds.split"] == params["seed"] == "3"
    older = {k: v for k, v in params.items() if k != "seeds.split"}
    assert fingerprint(older) == fingerprint(params)
    assert fingerprint({**params, "seeds.split": "0"}) != fingerprint(params)
    older_job(root, older)
    assert previous_attempt(root / "job", tracking_uri(root), params).state.run_id
    with pytest.raises(ConfigError, match=r"seeds\.split: 3 -> 0"):
        previous_attempt(root / "job", tracking_uri(root), {**params, "seeds.split": "0"})


def test_a_run_from_before_train_eval_is_the_same_config(compose_cfg, root) -> None:
    """data.train_eval and its limit were added later, off: a run without them scored no clean
    training set, which is what their defaults do, so it resumes with the same fingerprint;
    turning the scores on is a different config, named in the refusal."""
    with compose_cfg(*FAST) as cfg:
        params = flatten_params(resolved(cfg))
    assert (params["data.train_eval"], params["data.train_eval_limit"]) == ("False", "None")
    older = {k: v for k, v in params.items() if not k.startswith("data.train_eval")}
    assert fingerprint(older) == fingerprint(params)
    assert fingerprint({**params, "data.train_eval": "True"}) != fingerprint(params)
    older_job(root, older)
    assert previous_attempt(root / "job", tracking_uri(root), params).state.run_id
    with pytest.raises(ConfigError, match=r"data\.train_eval: False -> True"):
        previous_attempt(root / "job", tracking_uri(root), {**params, "data.train_eval": "True"})


@pytest.mark.slow
def test_parallel_sweep_jobs_share_the_cores(root, monkeypatch) -> None:
    """Two joblib jobs at once, nothing set by the user: each takes half the cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    args = ["ablab.train", "-m", "hydra/launcher=local_parallel", *FAST, "seed=0,1"]
    proc = run_module(args, root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for child in children:
        assert child.data.params["runtime.torch_threads"] == share
        assert child.data.params["runtime.torch_threads_source"] == "joblib"
