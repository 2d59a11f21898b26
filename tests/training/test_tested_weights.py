"""Final validation and test from the same weights: the test stage scores the validation set (and
the clean training set) with the weights it tests, as ``tested_val/*`` (``tested_train_eval/*``),
and the run's tags name those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablab.training.evaluate import evaluate
from ablab.training.job import metric_summary
from ablab.training.lifecycle import train
from conftest import tracking_uri
from jobs import only_run

#: Four whole epochs of a LeNet that learns (ReLU): val/acc changes from epoch to epoch (here its
#: best is epoch 2, not the last), and all of validation is scored (limit_val_batches =
#: limit_test_batches = all), as test scores it.
LEARNING = [
    "trainer=smoke",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "trainer.system_metrics_interval=null",
    "trainer.threads=1",
    "logger.log_model=false",
    "model.act=relu",
    "optimizer.lr=0.01",
    "data.train_eval=true",
    "data.train_eval_limit=300",
    "callbacks.batch_preview=null",
]


def by_epoch(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """epoch -> the value of ``key`` logged in it (Lightning logs ``epoch`` at the same steps)."""
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(run_id, "epoch")}
    return {epoch_at[m.step]: m.value for m in client.get_metric_history(run_id, key)}


def test_the_tested_checkpoint_scores_validation_as_it_did_at_its_epoch(compose_cfg, root: Path):
    """The best checkpoint's tested_val/acc is val/acc at the epoch it was saved at, exactly:
    the same weights on the same examples; ``ablab eval`` of last.ckpt gives the last epoch's."""
    with compose_cfg(*LEARNING) as cfg:
        metrics = train(cfg)
    client = MlflowClient(tracking_uri(root))
    run = only_run(client)
    run_id, tags = run.info.run_id, run.data.tags
    epoch = int(tags["tested_epoch"])
    assert tags["tested_weights"] == f"best val/acc checkpoint (epoch {epoch})"
    assert tags["tested_weights.kind"] == "best"
    (best,) = root.glob("**/checkpoints/epoch*.ckpt")
    assert best.name == f"epoch{epoch:03d}.ckpt"

    val = by_epoch(client, run_id, "val/acc")
    print(f"val/acc by epoch {val}; tested epoch {epoch}: tested_val/acc "
          f"{metrics['tested_val/acc']}, test/acc {metrics['test/acc']}")  # fmt: skip
    assert metrics["tested_val/acc"] == val[epoch] == max(val.values())
    assert metrics["tested_val/loss"] == pytest.approx(by_epoch(client, run_id, "val/loss")[epoch])
    clean = by_epoch(client, run_id, "train_eval/acc")
    assert metrics["tested_train_eval/acc"] == clean[epoch]
    # the same names as validation's, in the tested_ namespace; logged, and returned as logged
    logged = run.data.metrics
    for stage in ("val", "train_eval"):
        names = {k.split("/", 1)[1] for k in logged if k.startswith(f"{stage}/")} - {"acc_best"}
        assert names == {k.split("/", 1)[1] for k in logged if k.startswith(f"tested_{stage}/")}
    assert {"tested_val/recall/9", "tested_val/f1_macro", "tested_train_eval/acc_top5"} <= set(
        logged
    )
    assert metrics == {**metric_summary(logged), "val/acc_best": val[epoch]}

    # ablab eval of another checkpoint, into a new run: the last epoch's weights, named so
    last = best.parent / "last.ckpt"
    evaluated = evaluate([f"ckpt_path={last}", "new_run=true"])
    (new,) = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run_id]
    final = max(val)
    assert new.data.tags["tested_weights"] == f"last.ckpt (epoch {final})"
    assert (new.data.tags["tested_weights.kind"], new.data.tags["tested_epoch"]) == (
        "last",
        str(final),
    )
    assert evaluated["tested_val/acc"] == new.data.metrics["tested_val/acc"] == val[final]
    assert evaluated["tested_train_eval/acc"] == clean[final]
