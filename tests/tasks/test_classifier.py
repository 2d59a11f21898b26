"""The classifier's metrics: names, and values checked against scikit-learn's definitions."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import f1_score, recall_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablab.tasks import ClassifierModule

C = 10


def passthrough_task() -> ClassifierModule:
    """A classifier whose net returns its input: the batches' x are the logits scored."""
    net = nn.Linear(C, C)
    with torch.no_grad():
        net.weight.copy_(torch.eye(C))
        net.bias.zero_()
    return ClassifierModule(
        net, partial(torch.optim.SGD, lr=0.0), None, nn.CrossEntropyLoss(), num_classes=C
    )


def trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, **kw)  # fmt: skip


@pytest.fixture
def scored() -> tuple[torch.Tensor, torch.Tensor]:
    """Imbalanced labels (class c has 40 − 3c examples) and noisy logits that favour them."""
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((40 - 3 * c,), c) for c in range(C)])
    logits = 3.0 * nn.functional.one_hot(y, C) + 2.0 * torch.randn(len(y), C, generator=g)
    return logits, y


def loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=32)  # several batches are accumulated


@pytest.mark.parametrize("stage", ["val", "test"])
def test_eval_stages_log_macro_f1_and_per_class_recall(stage, scored) -> None:
    logits, y = scored
    run = trainer().validate if stage == "val" else trainer().test
    (logged,) = run(passthrough_task(), dataloaders=loader(logits, y))
    recall = [f"{stage}/recall/{c}" for c in range(C)]
    expected_names = {"loss", "acc", "acc_top5", "f1_macro", "recall_macro"}
    assert set(logged) == {f"{stage}/{n}" for n in expected_names} | set(recall)
    pred = logits.argmax(1).numpy()
    assert logged[f"{stage}/f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert logged[f"{stage}/recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"))
    per_class = recall_score(y, pred, average=None)
    assert [logged[k] for k in recall] == pytest.approx(per_class.tolist())
    assert logged[f"{stage}/acc"] != pytest.approx(logged[f"{stage}/recall_macro"])  # imbalanced


def test_each_epoch_is_scored_afresh(scored) -> None:
    """Epoch states are reset: after an epoch of every class, one of class 0 alone scores class 9
    as absent; and no metric complains that it is computed without updates."""
    logits, y = scored
    task, run = passthrough_task(), trainer()
    (first,) = run.test(task, dataloaders=loader(logits, y))
    head = y == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (second,) = run.test(task, dataloaders=loader(logits[head], y[head]))
    assert not [w for w in caught if "before the ``update``" in str(w.message)]
    assert first["test/recall/9"] > 0 and second["test/recall/9"] == 0
    expected = recall_score(y[head], logits[head].argmax(1), labels=[0], average=None)[0]
    assert second["test/recall/0"] == pytest.approx(expected)


def test_training_logs_no_per_class_metrics(scored) -> None:
    logits, y = scored
    fit = trainer(max_steps=1, limit_val_batches=0)
    fit.fit(passthrough_task(), train_dataloaders=loader(logits, y))
    logged = set(fit.callback_metrics)
    assert "train/acc" in logged and "train/loss" in logged
    assert not any("f1" in k or "recall" in k for k in logged), logged


def test_soft_targets_are_scored_against_their_argmax(scored) -> None:
    logits, y = scored
    soft = 0.7 * nn.functional.one_hot(y, C).float() + 0.03  # what mixup hands over: (N, C)
    (hard,) = trainer().test(passthrough_task(), dataloaders=loader(logits, y))
    (mixed,) = trainer().test(passthrough_task(), dataloaders=loader(logits, soft))
    for key in ("test/acc", "test/f1_macro", "test/recall_macro", "test/recall/9"):
        assert mixed[key] == pytest.approx(hard[key]), key
