"""Every conf/model/*.yaml exports with ``torch.export`` at the input size its config trains on
(data=digits: 1 x 28 x 28; sequence models: the digits as 28 rows of 28 pixels), and the exported
program computes the eager net's outputs."""

from __future__ import annotations

import gc

import pytest
import torch
from hydra.utils import instantiate
from test_zoo import SEGMENTATION_DIGITS, SEQUENCE_DIGITS, form_of
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import CONF

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Over about 3 s each on one core: tracing cost grows with the number of layers.
HEAVY = {"densenet121", "densenet_bc100", "efficientnet_b0", "efficientnet_b0_small",
         "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "googlenet", "plain110",
         "preact_resnet110", "resnet101", "resnet110", "resnet152", "se_resnet50"}  # fmt: skip


@pytest.fixture(autouse=True)
def _collect() -> None:
    """An exported program holds its net in reference cycles: free each net now, not once a few
    500 MB VGGs have piled up for the cyclic collector."""
    yield
    gc.collect()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS]
)
def test_exported_program_equals_the_eager_net(name, compose_cfg) -> None:
    sequence = form_of(name) == "sequence"
    overrides = {
        "sequence": SEQUENCE_DIGITS,
        "segmentation": SEGMENTATION_DIGITS,
        "detection": SEGMENTATION_DIGITS,
    }.get(form_of(name), ())
    with compose_cfg(f"model={name}", *overrides) as cfg:  # timm.yaml: nothing downloaded
        torch.manual_seed(0)
        net = instantiate(cfg.model).eval()
        size = cfg.data.image_size
        x = torch.rand(2, *((size, size) if sequence else (cfg.data.in_channels, size, size)))
    with torch.no_grad():
        # Running statistics away from (0, 1), so a program that loses them differs.
        for module in net.modules():
            if isinstance(module, _BatchNorm):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        program = torch.export.export(net, (x,))
        torch.testing.assert_close(program.module()(x), net(x))
