"""check_types: a wrong type names the key and the type its constructor expects; legal values pass."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Interval

from ablab.errors import ConfigError
from ablab.training.types import check_node, check_types, type_name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.max_epochs=abc"],
            "trainer.max_epochs=abc: expected int | None (pytorch_lightning.Trainer max_epochs)",
        ),
        (
            ["trainer.max_epochs=2.5"],
            "trainer.max_epochs=2.5: expected int | None (pytorch_lightning.Trainer max_epochs)",
        ),
        (
            ["data.batch_size=abc"],
            "data.batch_size=abc: expected int (ablab.data.DigitsDataModule batch_size)",
        ),
        (
            ["optimizer.lr=abc"],
            "optimizer.lr=abc: expected float | torch.Tensor (torch.optim.Adam lr)",
        ),
        (["optimizer.betas=[0.9,abc]"], 'optimizer.betas=[0.9, "abc"]: expected tuple['),
        (["optimizer=sgd", "optimizer.nesterov=3"], "optimizer.nesterov=3: expected bool"),
        (["trainer.precision=bf17"], "trainer.precision=bf17: expected 64 | 32 | 16 |"),
        (
            ["model=resnet20", "model.depths=[3,a,3]"],
            'model.depths=[3, "a", 3]: expected Sequence[int]',
        ),
        (["callbacks.model_checkpoint.save_top_k=x"], "callbacks.model_checkpoint.save_top_k=x"),
        # Legal for the Trainer, not for the scheduler that copies it: named with its source.
        (
            ["trainer.max_epochs=null"],
            "scheduler.scheduler.max_epochs=null (from ${trainer.max_epochs}): expected int",
        ),
        (["seed=abc"], "seed=abc: expected int (its default in train.yaml is 0)"),
        (["seeds.init=1.5"], "seeds.init=1.5: expected int"),
        (["resume=maybe"], "resume=maybe: expected bool (its default in train.yaml is true)"),
    ],
)
def test_wrong_type_names_key_and_type(overrides, message, compose_cfg) -> None:
    with compose_cfg(*overrides) as cfg, pytest.raises(ConfigError) as info:
        check_types(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer.devices=auto"],
        ["trainer.devices=[0,1]"],
        ["trainer.devices=-1"],
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=32"],
        ["trainer.limit_train_batches=0.5"],
        ["trainer.limit_train_batches=5"],
        ["trainer.gradient_clip_val=1"],
        ["trainer.gradient_clip_val=0.5"],
        ["optimizer.lr=1"],
        ["optimizer.betas=[0.9,0.99]"],
        ["optimizer=sgd", "optimizer.lr=1e-3", "optimizer.nesterov=true"],
        ["data.batch_size=64"],
        ["scheduler=onecycle"],
        ["scheduler=multistep", "scheduler.scheduler.milestones=[2,4]"],
        ["scheduler=none", "trainer.max_epochs=null"],
        ["model=resnet20", "model.bottleneck_ratio=null"],
        ["seed=3", "seeds.data=0", "resume=false"],
    ],
    ids=lambda o: " ".join(o) or "default",
)
def test_legal_values_pass(overrides, compose_cfg) -> None:
    with compose_cfg(*overrides) as cfg:
        check_types(cfg)


def test_type_name() -> None:
    assert type_name(int | None) == "int | None"
    assert type_name(Literal["a", 1]) == "'a' | 1"
    assert type_name(list[int]) == "list[int]"
    assert type_name(Annotated[float, Ge(0)]) == "float >= 0"
    assert type_name(Annotated[int, Interval(ge=1, lt=10)]) == "int >= 1 and < 10"
    assert type_name(Annotated[int, "a note"]) == "int"


class Bounded:
    def __init__(self, patience: Annotated[int, Ge(1)] = 1, rate: Annotated[float, Ge(0)] = 0.0):
        self.patience, self.rate = patience, rate


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"patience": 0}, "x.patience=0: expected int >= 1"),
        ({"rate": -0.5}, "x.rate=-0.5: expected float >= 0"),
        ({"patience": 1.5}, "x.patience=1.5: expected int >= 1"),
    ],
)
def test_a_value_outside_its_annotated_range_is_refused_with_the_range(node, message) -> None:
    target = f"{__name__}.{Bounded.__qualname__}"
    check_node({"_target_": target, "patience": 2, "rate": 0}, "x")  # in range: int 0 is a float
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_node({"_target_": target, **node}, "x")
