"""Config -> MLflow params: flattened, volatile keys left out, long values kept whole."""

from __future__ import annotations

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from ablab.tracking import flatten_params


def test_flatten_nested_config() -> None:
    config = {
        "model": {"act": "relu", "widths": [6, 16]},
        "paths": {"root_dir": "/tmp/x"},
        "trainer": {"max_epochs": 3, "default_root_dir": "/tmp/x/run"},
        "scheduler": None,
        "empty": {},
    }
    assert flatten_params(config) == {
        "model.act": "relu",
        "model.widths": "[6, 16]",
        "trainer.max_epochs": "3",
        "scheduler": "None",
        "empty": "{}",
    }


def test_long_values_are_split_losslessly() -> None:
    value = "x" * (2 * MAX_PARAM_VAL_LENGTH + 7)
    flat = flatten_params({"model": {"layout": value}})
    assert set(flat) == {"model.layout", "model.layout.part1", "model.layout.part2"}
    assert all(len(v) <= MAX_PARAM_VAL_LENGTH for v in flat.values())
    joined = flat["model.layout"] + flat["model.layout.part1"] + flat["model.layout.part2"]
    assert joined == value


def test_long_param_is_accepted_by_mlflow(tmp_path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a")))
    flat = flatten_params({"k": "y" * (MAX_PARAM_VAL_LENGTH + 1)})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, value)
    params = client.get_run(run.info.run_id).data.params
    assert len(params["k"]) + len(params["k.part1"]) == MAX_PARAM_VAL_LENGTH + 1
