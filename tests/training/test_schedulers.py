"""The step-counted multistep schedule with a constant warm-up (He et al. 2016 §4.2)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ablab.errors import ConfigError
from ablab.training.schedulers import multistep_with_warmup


def lrs_at(scheduler_factory, steps: set[int], lr: float = 0.1) -> dict[int, float]:
    """The lr each of ``steps`` trains with, stepping once per optimizer step as Lightning does
    for ``interval: step`` (step i trains with the lr left after i scheduler steps)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_factory(optimizer)
    optimizer.step()  # once: the lr does not depend on it, and 64k steps would take seconds
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = optimizer.param_groups[0]["lr"]
        scheduler.step()
    return seen


def test_the_paper_schedule_with_the_resnet110_warmup(compose_cfg) -> None:
    # The scheduler exactly as the ResNet-110 recipe configures it.
    with compose_cfg("experiment=cifar10_resnet110_he2016") as cfg:
        config = instantiate(cfg.scheduler, _convert_="all")
    assert config["interval"] == "step"
    seen = lrs_at(config["scheduler"], {0, 399, 400, 31999, 32000, 47999, 48000, 63999})
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01,
                48000: 0.001, 63999: 0.001}  # fmt: skip
    assert seen == pytest.approx(expected)


def test_without_warmup_it_is_torchs_multistep() -> None:
    ours = lrs_at(lambda o: multistep_with_warmup(o, [3, 6], gamma=0.5), set(range(9)))
    torchs = lrs_at(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 6], 0.5), set(range(9)))
    assert ours == pytest.approx(torchs)
    assert ours[0] == 0.1  # no warm-up by default


def test_milestones_count_from_the_first_step_not_from_the_end_of_warmup() -> None:
    # SequentialLR(ConstantLR, MultiStepLR) would move the milestone to step 2 + 4.
    seen = lrs_at(lambda o: multistep_with_warmup(o, [4], warmup_steps=2), set(range(6)))
    assert list(seen.values()) == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"milestones": [0, 10]}, "must be positive step counts"),
        ({"milestones": [10], "warmup_steps": 11}, "at most the first milestone"),
        ({"milestones": [10], "warmup_steps": -1}, "warmup_steps=-1 must be >= 0"),
        ({"milestones": [10], "warmup_factor": 0.0}, r"warmup_factor=0.0 must be in \(0, 1\]"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs, message) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=message):
        multistep_with_warmup(optimizer, **kwargs)
