"""ablab against a real MLflow tracking server (PostgreSQL backend, proxied artifacts), and the
docker/compose.yaml that deploys one.

The server tests start PostgreSQL and ``mlflow server`` once for the module (tests/services.py),
with the ``--allowed-hosts`` value of the compose file, and train in subprocesses against it.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.server.security_utils import is_allowed_host_header

from ablab.tracking import flatten_params, mlflow_logger
from ablab.training.lifecycle import tracked_run
from conftest import CONF, REPO, run_module
from injected import SAFETY_TIMEOUT_S
from services import MlflowServer, mlflow_server, postgres_server

COMPOSE = REPO / "docker" / "compose.yaml"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mlflow_flags(compose: dict) -> dict[str, str | None]:
    """``mlflow server`` flags of the compose ``mlflow`` service: ``--flag=value`` or bare."""
    command = compose["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"], command
    flags: dict[str, str | None] = {}
    for arg in command[2:]:
        name, _, value = arg.partition("=")
        flags[name] = value or None
    return flags


# --- docker/compose.yaml: no Docker engine here, so the structure is checked as data ---------


# One worker runs this module, so parallel test processes share one server.
pytestmark = pytest.mark.xdist_group("mlflow_server")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_compose_healthchecks_gate_startup_order(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "s3", "create-bucket", "mlflow", "trainer"} <= set(services)
    depends = {
        name: {dep: spec["condition"] for dep, spec in s.get("depends_on", {}).items()}
        for name, s in services.items()
    }
    assert depends["create-bucket"] == {"s3": "service_healthy"}
    assert depends["mlflow"] == {
        "postgres": "service_healthy",
        "s3": "service_healthy",
        "create-bucket": "service_completed_successfully",
    }
    assert depends["trainer"] == depends["trainer-gpu"] == {"mlflow": "service_healthy"}
    for name, deps in depends.items():
        for dep, condition in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":  # else compose waits forever
                assert services[dep]["healthcheck"]["test"], f"{dep} has no healthcheck"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    port = mlflow_flags(compose)["--port"]
    assert f"127.0.0.1:{port}/health" in str(services["mlflow"]["healthcheck"]["test"])
    for volume in ("postgres-data", "s3-data"):  # runs and artifacts outlive the containers
        assert volume in compose["volumes"]


def test_compose_mlflow_server_flags_exist_and_match(compose: dict) -> None:
    from mlflow.cli import server

    flags = mlflow_flags(compose)
    known = {opt for param in server.params for opt in param.opts}
    assert set(flags) <= known, set(flags) - known  # every flag exists in the pinned mlflow
    services = compose["services"]
    assert services["mlflow"]["image"].endswith(f":v{mlflow.__version__}-full")
    backend = urlparse(flags["--backend-store-uri"])
    assert (backend.scheme, backend.hostname, backend.port) == (
        "postgresql+psycopg2",
        "postgres",
        5432,
    )
    destination = urlparse(flags["--artifacts-destination"])
    assert destination.scheme == "s3"
    assert f"s3://{destination.netloc}" in str(services["create-bucket"]["command"])
    assert "--serve-artifacts" in flags and flags["--host"] == "0.0.0.0"
    endpoint = urlparse(services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "s3" and f"-s3.port={endpoint.port}" in services["s3"]["command"]
    # Host headers carry the port: the trainer sends "mlflow:5000", a local browser "localhost:5000".
    hosts = flags["--allowed-hosts"].split(",")
    for host in (f"mlflow:{flags['--port']}", "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, "attacker.example:5000")


def test_compose_trainer_is_built_from_the_repo_and_tracks_to_the_server(compose: dict) -> None:
    services = compose["services"]
    trainer = services["trainer"]
    context = (COMPOSE.parent / trainer["build"]["context"]).resolve()
    assert context == REPO and (context / trainer["build"]["dockerfile"]).is_file()
    uri = urlparse(trainer["environment"]["MLFLOW_TRACKING_URI"])
    assert (uri.scheme, uri.hostname, str(uri.port)) == (
        "http",
        "mlflow",
        mlflow_flags(compose)["--port"],
    )
    gpu = services["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"]  # not started by a plain `docker compose up`
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    for service in (trainer, gpu):  # default commands name existing config options
        for override in service["command"]:
            group, _, option = override.partition("=")
            if (CONF / group).is_dir():
                assert (CONF / group / f"{option}.yaml").is_file(), override


def test_server_uri_leaves_the_artifact_location_to_the_server(compose_cfg, monkeypatch) -> None:
    uri = load_compose()["services"]["trainer"]["environment"]["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as in the trainer container
    with compose_cfg() as cfg:
        assert cfg.logger.tracking_uri == uri
        assert cfg.logger.artifact_location is None  # the server picks mlflow-artifacts:/
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with compose_cfg() as cfg:  # the local default keeps an explicit artifact folder
        assert cfg.logger.tracking_uri.startswith("sqlite:///")
        assert cfg.logger.artifact_location == f"{cfg.paths.root_dir}/mlartifacts"


# --- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """PostgreSQL + ``mlflow server`` for this module, admitting the compose file's hosts."""
    hosts = mlflow_flags(load_compose())["--allowed-hosts"]
    with postgres_server() as pg:
        backend = pg.create_database("mlflow")
        with mlflow_server(backend, tmp_path_factory.mktemp("mlflow"), allowed_hosts=hosts) as srv:
            print(f"mlflow server healthy after {srv.start_seconds:.1f} s at {srv.url}")
            yield srv


def train_on(server: MlflowServer, root: Path, *overrides: str):
    """A smoke training in a subprocess, tracked on ``server`` (``tests.injected`` importable)."""
    root.mkdir(parents=True, exist_ok=True)
    args = ["ablab.train", "trainer=smoke", f"logger.tracking_uri={server.url}", *overrides]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = run_module(args, root, timeout=SAFETY_TIMEOUT_S, extra_env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def assert_full_histories(client: MlflowClient, run: Run) -> None:
    """Every training step and epoch of the run's config reached the server, in order."""
    params, run_id = run.data.params, run.info.run_id
    epochs = int(params["trainer.max_epochs"])
    steps = int(params["trainer.limit_train_batches"]) * epochs
    for key in ("train/loss_step", "lr-Adam/weights"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(steps)), key
        assert all(math.isfinite(m.value) for m in history), key
    for key in ("train/loss", "val/loss", "val/acc"):
        assert len(client.get_metric_history(run_id, key)) == epochs, key
    assert {"test/acc", "test/loss"} <= set(run.data.metrics)


@pytest.mark.server
@pytest.mark.slow  # the module's server takes 10-15 s to start
def test_server_admits_the_compose_hosts_only(server: MlflowServer) -> None:
    def status(host: str) -> int:
        url = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host})) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status("mlflow:5000") == 200  # the trainer container's Host header
    assert status("localhost:5000") == 200
    assert status("attacker.example:5000") == 403


@pytest.mark.server
@pytest.mark.slow
def test_training_is_tracked_on_the_server(server: MlflowServer, tmp_path: Path) -> None:
    train_on(server, tmp_path, "experiment_name=server_test")
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("server_test")
    # ablab passed no artifact location: the server proxies artifacts to its own destination.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    # params: the whole resolved config as logged in config/config.yaml, flattened
    config_file = client.download_artifacts(run_id, "config/config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(config_file).read_text())
    assert flatten_params(config).items() <= run.data.params.items()
    assert int(run.data.params["complexity.params"]) > 0
    assert_full_histories(client, run)
    # artifacts: listed and downloaded through the server, stored under its destination
    paths = artifact_paths(client, run_id)
    assert {"config/config.yaml", "config/overrides.yaml", "config/command.txt"} <= set(paths)
    checkpoints = [p for p in paths if p.endswith(".ckpt")]
    assert checkpoints, paths
    for path in checkpoints:  # byte-identical to what Lightning wrote locally
        (local,) = (tmp_path / "outputs").rglob(f"checkpoints/{Path(path).name}")
        downloaded = Path(client.download_artifacts(run_id, path, str(tmp_path / "dl")))
        assert sha256(downloaded) == sha256(local), path
    stored = [p for p in server.artifacts.rglob("config.yaml") if run_id in p.parts]
    assert stored, "artifacts did not land under the server's --artifacts-destination"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.server
@pytest.mark.slow
def test_two_concurrent_trainings_share_the_server(server: MlflowServer, tmp_path: Path) -> None:
    client = MlflowClient(server.url)
    # Created first, as a sweep's launcher does; jobs racing to create it: the test below.
    name = "server_concurrent"
    experiment_id = client.create_experiment(name)
    seeds = (0, 1)
    # both wait for each other at step 1, so both runs are live at once however slowly one starts
    meet = ("+callbacks.meet={_target_: tests.injected.MeetAtStep, step: 1, "
            f"folder: '{tmp_path / 'meet'}', parties: {len(seeds)}}}")  # fmt: skip
    with ThreadPoolExecutor(len(seeds)) as pool:
        jobs = [
            pool.submit(
                train_on, server, tmp_path / f"s{s}", f"seed={s}", f"experiment_name={name}", meet
            )
            for s in seeds
        ]
        for job in jobs:
            job.result()
    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"lenet5-digits-s{s}" for s in seeds]
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time  # they really ran at the same time
    for run in runs:
        assert run.info.status == "FINISHED"
        assert_full_histories(client, run)
    assert set(first.data.metrics) == set(second.data.metrics)


def wait_for_each_other(method):
    """``method`` whose first call in each of the two ``job`` threads returns only once both
    threads have made it: both see the store as it was before either wrote."""
    barrier, first_done = threading.Barrier(2), threading.local()

    def wrapped(self, *args):
        found = method(self, *args)
        in_job = threading.current_thread().name.startswith("job")
        if in_job and not getattr(first_done, "value", False):
            first_done.value = True
            barrier.wait(timeout=SAFETY_TIMEOUT_S)
        return found

    return wrapped


@pytest.mark.server
@pytest.mark.slow
def test_parallel_jobs_racing_to_create_the_experiment_both_run(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    # Both jobs look the experiment up before either creates it, and then both read its tags
    # before either writes the experiment-kind tag (a unique-key violation on PostgreSQL).
    for method in ("get_experiment_by_name", "get_experiment"):
        monkeypatch.setattr(
            MlflowClient, method, wait_for_each_other(getattr(MlflowClient, method))
        )
    statuses: list[str] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            with tracked_run(mlflow_logger(experiment_name=name, tracking_uri=server.url)) as run:
                pass
            statuses.append(run.status)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=job, name=f"job{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    assert statuses == ["FINISHED", "FINISHED"]
    experiment = MlflowClient(server.url).get_experiment_by_name(name)
    assert len(MlflowClient(server.url).search_runs([experiment.experiment_id])) == 2
