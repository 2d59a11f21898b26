"""Sequence data: the adding and recall problems as defined, seeded; images read row by row."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from ablab.data.module import DataModule
from ablab.data.sequence import as_rows
from ablab.errors import ConfigError
from ablab.training.run import as_config_error, component_class, components


def build(cfg):
    data = instantiate(
        cfg.data, **components(cfg, component_class(cfg, "data", DataModule).components)
    )
    data.setup("fit")
    return data


def test_adding_problem_marks_one_value_in_each_half_and_sums_them(compose_cfg) -> None:
    with compose_cfg("task=sequence", "data=adding", "data.length=20", "data.n_train=300") as cfg:
        assert cfg.loss._target_ == "torch.nn.MSELoss"  # the data's values take a regression loss
        assert (cfg.task.monitor, cfg.task.mode) == ("val/mse", "min")
        data = build(cfg)
    x, y = data.splits["train"].tensors
    assert x.shape == (300, 20, 2) and y.shape == (300,)
    values, marks = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert torch.equal(marks[:, :10].sum(1), torch.ones(300))  # one mark in the first half
    assert torch.equal(marks[:, 10:].sum(1), torch.ones(300))  # and one in the second
    assert torch.allclose(y, (values * marks).sum(1))
    # predicting the mean scores Var(u1 + u2) = 1/6 on the held-out sequences: the bar
    bar = data.run_params()["data.mean_predictor_mse"]
    assert bar == pytest.approx(1 / 6, abs=0.03)


def test_held_out_sequences_depend_on_the_seed_not_on_the_training_size(compose_cfg) -> None:
    def splits(*overrides):
        with compose_cfg("task=sequence", "data=adding", "data.n_train=100", *overrides) as cfg:
            return build(cfg).splits

    a, b, other = splits(), splits("data.n_train=200"), splits("seed=1")
    for split in ("test", "val"):
        assert torch.equal(a[split].tensors[0], b[split].tensors[0])
        assert not torch.equal(a[split].tensors[0], other[split].tensors[0])
    assert torch.equal(a["train"].tensors[0], splits()["train"].tensors[0])  # seeded


def test_recall_problem_asks_for_the_first_symbol_after_blanks(compose_cfg) -> None:
    with compose_cfg("task=sequence", "data=copy", "data.length=6", "data.n_train=50") as cfg:
        assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss"
        assert (cfg.task.monitor, cfg.task.mode, cfg.data.num_outputs) == ("val/acc", "max", 8)
        data = build(cfg)
    x, y = data.splits["train"].tensors
    assert x.shape == (50, 6, 9)
    assert torch.equal(x[:, 0, :8].argmax(1), y) and torch.equal(x[:, 0].sum(1), torch.ones(50))
    # distractors: one symbol at every middle step, never the query flag
    assert torch.equal(x[:, 1:-1, :8].sum(2), torch.ones(50, 4)) and not x[:, 1:-1, 8].any()
    assert torch.equal(x[:, -1, 8], torch.ones(50)) and not x[:, -1, :8].any()  # the query
    # so held-out sequences are new ones, not the training set again (8 symbols, 8^5 sequences)
    seen = {tuple(row.argmax(1).tolist()) for row in x}
    held = data.splits["test"].tensors[0]
    assert sum(tuple(row.argmax(1).tolist()) in seen for row in held) < len(held) // 10


def test_image_rows_are_the_image_modules_batches_row_by_row(compose_cfg) -> None:
    with compose_cfg("task=sequence", "data=digits_rows") as cfg:
        rows = build(cfg)
    with compose_cfg("data=digits") as cfg:
        images = build(cfg)
    batch = next(iter(images.train_dataloader()))
    x, y = images.on_after_batch_transfer(batch, 0)
    seq, seq_y = rows.on_after_batch_transfer(next(iter(rows.train_dataloader())), 0)
    assert seq.shape == (64, 28, 28) and torch.equal(seq_y, y)
    assert torch.equal(seq, as_rows(x)) and torch.equal(seq[:, 5], x[:, 0, 5])  # step t = row t
    assert rows.example_input().shape == (2, 28, 28)
    assert set(rows.test_dataloader()) == {"test", "val"}  # the image module's test stage


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=adding", "data.input_size=3"], "data.input_size=3 but the adding problem has"),
        (
            ["data=copy", "data.input_size=9", "data.num_classes=4"],
            "data.input_size=9 but the copy problem has",
        ),
        (["data=adding", "data.length=1"], "data.length must be at least 2"),
        (["data=digits_rows", "data.input_size=8"], "data.input_size=8 but rows of digits"),
    ],
)
def test_a_wrong_declared_shape_is_one_line(compose_cfg, overrides, message) -> None:
    with compose_cfg("task=sequence", *overrides) as cfg, pytest.raises(Exception) as err:
        build(cfg)
    shown = as_config_error(err.value)  # what the core prints (ablab.training.run.build)
    assert isinstance(err.value.__cause__, ConfigError)
    assert message in str(shown) and "\n" not in str(shown)


def test_recall_features_follow_the_symbol_count(compose_cfg) -> None:
    """input_size = num_classes + 1 (one-hot symbols and the query flag), from the config: a
    change of data.num_classes alone composes a model of the right width."""
    from hydra.utils import instantiate

    with compose_cfg("task=sequence", "data=copy", "model=lstm", "data.num_classes=4") as cfg:
        assert cfg.data.input_size == cfg.model.input_size == 5
        dm = instantiate(cfg.data, n_train=8, n_val=4, n_test=4)
        assert dm.example_input().shape[2] == 5
