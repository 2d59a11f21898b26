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


def test_train_eval_equals_an_eval_mode_hand_computation_on_the_clean_training_set() -> None:
    """A net with batch norm and dropout trained four epochs on digits with flips and crops: the
    logged train_eval/acc and train_eval/loss are the final weights' scores, in eval mode, on
    every training example unaugmented and standardised, computed here by hand; train/acc, taken
    with dropout and augmentation on, is lower."""
    import copy

    import kornia.augmentation as K

    from ablab.data import BatchAugment, DigitsDataModule

    pl.seed_everything(0)
    augment = BatchAugment(
        {"crop": K.RandomCrop((8, 8), padding=2), "hflip": K.RandomHorizontalFlip(p=0.5)}
    )
    dm = DigitsDataModule(image_size=8, augmentation=augment, train_eval=True)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, C),
    )
    task = ClassifierModule(
        net, partial(torch.optim.Adam, lr=0.01), None, nn.CrossEntropyLoss(), num_classes=C
    )
    fit = trainer(max_epochs=4)
    fit.fit(task, datamodule=dm)
    logged = {k: v.item() for k, v in fit.callback_metrics.items()}

    x, y = dm.splits["train"].tensors  # every training example, as stored
    net.eval()  # dropout off, batch norm on its running statistics
    with torch.no_grad():
        logits = net(dm.standardize(x))
    correct = int((logits.argmax(1) == y).sum())
    loss = nn.functional.cross_entropy(logits, y).item()
    print(f"train_eval/acc {logged['train_eval/acc']:.6f} = {correct}/{len(y)}; train_eval/loss "
          f"{logged['train_eval/loss']:.6f} vs {loss:.6f}; train/acc {logged['train/acc']:.6f}")  # fmt: skip

    assert logged["train_eval/acc"] == torch.tensor(correct / len(y)).item()
    assert logged["train_eval/loss"] == pytest.approx(loss, rel=1e-6)
    top5 = (logits.topk(5).indices == y[:, None]).any(1).float().mean().item()
    assert logged["train_eval/acc_top5"] == pytest.approx(top5, abs=1e-7)
    assert not any(k.startswith("train_eval/") and "recall" in k for k in logged)
    assert "val/recall_macro" in logged  # validation is scored as before, beside it

    # The same weights with dropout on score lower (a copy: train mode would move BN's stats);
    # train/acc, with augmentation on too and weights moving over the epoch, lower still.
    dropout_on = copy.deepcopy(net).train()
    with torch.no_grad():
        dropped = (dropout_on(dm.standardize(x)).argmax(1) == y).float().mean().item()
    print(f"dropout on, no augmentation: {dropped:.6f}")
    assert logged["train/acc"] < dropped < logged["train_eval/acc"] - 0.02
