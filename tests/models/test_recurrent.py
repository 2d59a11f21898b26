"""Recurrent cells against PyTorch's fused modules, the shared time loop, truncated BPTT, configs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ablab.blocks.recurrent import FUSED, CellStack, Recurrent
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.layers.recurrent import LSTMCell, PeepholeLSTMCell
from ablab.models import RecurrentNet
from ablab.registry import CELL
from ablab.training.run import as_config_error

#: (cell, nonlinearity) pairs PyTorch computes too
TWINS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
#: (num_layers, bidirectional)
LAYOUTS = [(1, False), (2, False), (2, True)]
GATES = {"rnn": 1, "lstm": 4, "lstm_peephole": 4, "gru": 3}
SEQUENCE_CONFIGS = ["rnn", "lstm", "lstm_peephole", "gru"]


def copy_fused(stack: CellStack, fused: nn.RNNBase) -> None:
    """Load the fused module's weights into the cells: cell ``l1_reverse``'s ``weight_ih`` is
    ``weight_ih_l1_reverse``, and so on."""
    with torch.no_grad():
        for key, cell in stack.cells.items():
            for name, p in cell.named_parameters():
                p.copy_(getattr(fused, f"{name}_{key}"))


def twins(cell: str, nonlinearity: str, num_layers: int, bidirectional: bool, **kw):
    """An ablab Recurrent and PyTorch's module for it, with the same weights."""
    torch.manual_seed(0)
    ours = Recurrent(cell, 3, 5, num_layers, bidirectional, nonlinearity, **kw)
    options = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    reference = FUSED[cell](
        3, 5, num_layers, batch_first=True, bidirectional=bidirectional, **options
    )
    copy_fused(ours.layers, reference)
    return ours, reference


@pytest.mark.parametrize(("num_layers", "bidirectional"), LAYOUTS)
@pytest.mark.parametrize(("cell", "nonlinearity"), TWINS)
def test_cells_compute_pytorchs_function(cell, nonlinearity, num_layers, bidirectional) -> None:
    ours, reference = twins(cell, nonlinearity, num_layers, bidirectional)
    x = torch.randn(4, 7, 3)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, state = ours.layers(x_ours)
    ref_out, ref_state = reference(x_ref)
    ref_state = ref_state if isinstance(ref_state, tuple) else (ref_state,)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    assert len(state) == len(ref_state)  # (h,) or (h, c), each (layers·D, N, H)
    for s, ref in zip(state, ref_state, strict=True):
        torch.testing.assert_close(s, ref, rtol=0, atol=1e-5)
    # The same loss on everything each returns: the gradients agree too (relative to their size:
    # the relu net's reach ~50).
    (out.square().sum() + sum(s.sum() for s in state)).backward()
    (ref_out.square().sum() + sum(s.sum() for s in ref_state)).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for key, c in ours.layers.cells.items():
        for name, p in c.named_parameters():
            theirs = getattr(reference, f"{name}_{key}").grad
            torch.testing.assert_close(p.grad, theirs, rtol=1e-5, atol=1e-5)
    # Recurrent returns the top layer's final hidden state per direction.
    _, h = ours(x)
    torch.testing.assert_close(h, ref_state[0][-(1 + bidirectional) :], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("num_layers", "bidirectional"), LAYOUTS)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_backends_are_interchangeable(cell, num_layers, bidirectional) -> None:
    torch.manual_seed(0)
    dropout = 0.5 if num_layers > 1 else 0.0  # between layers only
    fused = Recurrent(cell, 3, 5, num_layers, bidirectional, dropout=dropout, backend="torch")
    stepped = Recurrent(cell, 3, 5, num_layers, bidirectional, dropout=dropout, backend="ablab")
    assert sum(p.numel() for p in fused.parameters()) == sum(
        p.numel() for p in stepped.parameters()
    )
    copy_fused(stepped.layers, fused.layers.rnn)
    x = torch.randn(2, 6, 3)
    fused.eval(), stepped.eval()  # no dropout
    for a, b in zip(fused(x), stepped(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_peepholes_change_the_lstm_only_when_non_zero() -> None:
    torch.manual_seed(0)
    lstm, peephole = LSTMCell(3, 5), PeepholeLSTMCell(3, 5)
    assert set(lstm.state_dict()) < set(peephole.state_dict())  # the LSTM's names, plus three
    peephole.load_state_dict(lstm.state_dict(), strict=False)
    x, state = torch.randn(4, 3), (torch.randn(4, 5), torch.randn(4, 5))
    assert all(w.abs().max() > 0 for w in (peephole.weight_ci, peephole.weight_cf))
    h, (_, c) = peephole(x, state)
    h_lstm, (_, c_lstm) = lstm(x, state)
    assert not torch.allclose(h, h_lstm) and not torch.allclose(c, c_lstm)
    with torch.no_grad():
        for w in (peephole.weight_ci, peephole.weight_cf, peephole.weight_co):
            w.zero_()
    h, (_, c) = peephole(x, state)
    assert torch.equal(h, h_lstm) and torch.equal(c, c_lstm)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm_peephole", "gru"])
def test_init_is_pytorchs(cell) -> None:
    torch.manual_seed(0)
    made = CELL[cell](3, 16)
    bound = 1 / math.sqrt(16)
    for name, p in made.named_parameters():
        assert p.abs().max() <= bound and p.abs().max() > bound / 2, name
    assert made.weight_ih.shape == (GATES[cell] * 16, 3)
    assert made.weight_hh.shape == (GATES[cell] * 16, 16)


@pytest.mark.parametrize("backend", ["ablab", "torch"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bptt_gradient_reaches_exactly_the_last_k_steps(cell, backend) -> None:
    steps, k = 10, 4  # chunks of 2, 4, 4 steps: the short one first
    torch.manual_seed(0)
    full = Recurrent(cell, 3, 5, num_layers=2, backend=backend)
    truncated = Recurrent(cell, 3, 5, num_layers=2, bptt=k, backend=backend)
    truncated.load_state_dict(full.state_dict())
    x = torch.randn(2, steps, 3)
    reach = {}
    for name, net in {"full": full, "truncated": truncated}.items():
        x_in = x.clone().requires_grad_()
        out, h = net(x_in)
        h.sum().backward()
        reach[name] = x_in.grad.abs().sum(dim=(0, 2))  # per step
        if name == "truncated":  # the forward pass is the same function
            torch.testing.assert_close((out, h), full(x), rtol=0, atol=1e-6)
    assert (reach["full"] > 0).all()
    assert (reach["truncated"][: steps - k] == 0).all()
    assert (reach["truncated"][steps - k :] > 0).all()


def one_line_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        Recurrent(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_choices_are_one_line_errors_naming_the_valid_ones() -> None:
    assert one_line_error("lstn", 3, 5) == (
        "unknown cell 'lstn' (did you mean 'lstm'?); valid: gru, lstm, lstm_peephole, rnn"
    )
    assert "unknown recurrent backend 'cudnn'; valid: ablab, torch" in one_line_error(
        "lstm", 3, 5, backend="cudnn"
    )
    message = one_line_error("rnn", 3, 5, nonlinearity="gelu")
    assert message.startswith("unknown nonlinearity 'gelu'") and message.endswith("relu, tanh")
    assert "is for cell rnn" in one_line_error("lstm", 3, 5, nonlinearity="relu")
    message = one_line_error("lstm_peephole", 3, 5, backend="torch")
    assert "backend ablab with gru, lstm, lstm_peephole, rnn" in message
    assert "backend torch with gru, lstm, rnn" in message
    assert "positive" in one_line_error("lstm", 3, 5, bptt=0)
    assert "bidirectional=false" in one_line_error("lstm", 3, 5, bidirectional=True, bptt=5)


#: the adding problem's sizes: two features per step, one value out
ADDING = ("model.input_size=2", "model.num_outputs=1")
SWITCHES = {
    "ablab": (),
    "torch": ("model.backend=torch",),
    "stacked_bidirectional": ("model.num_layers=2", "model.bidirectional=true"),
}


@pytest.mark.parametrize(
    ("name", "switches"),
    [
        (name, switches)
        for name in SEQUENCE_CONFIGS
        for switches in SWITCHES
        if (name, switches) != ("lstm_peephole", "torch")  # no fused peephole LSTM
    ],
)
def test_config_trains_a_tiny_batch(name, switches, compose_cfg) -> None:
    with compose_cfg(f"model={name}", *ADDING, *SWITCHES[switches]) as cfg:
        torch.manual_seed(0)
        net = instantiate(cfg.model)
    assert cfg.model.cell == name and cfg.model.hidden_size == 64
    out = net(torch.randn(3, 5, 2))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"


def test_peephole_config_with_the_torch_backend_is_a_config_error(compose_cfg) -> None:
    with (
        pytest.raises(Exception) as info,  # Hydra wraps errors raised by the target
        compose_cfg("model=lstm_peephole", *ADDING, "model.backend=torch") as cfg,
    ):
        instantiate(cfg.model)
    assert "PyTorch has no fused 'lstm_peephole'" in str(as_config_error(info.value))


@pytest.mark.parametrize(("num_layers", "bidirectional"), LAYOUTS)
@pytest.mark.parametrize(
    ("cell", "backend"),
    [("rnn", "ablab"), ("lstm", "ablab"), ("lstm_peephole", "ablab"), ("gru", "ablab"),
     ("rnn", "torch"), ("lstm", "torch"), ("gru", "torch")],
)  # fmt: skip
def test_complexity_is_measured(cell, backend, num_layers, bidirectional) -> None:
    """The same count for the cells and the fused layers: nn.LSTM's oneDNN kernel, one op the
    FLOP counter has no formula for, counted 0 until measuring ran it unfused."""
    steps, features, hidden, outputs = 6, 3, 8, 2
    net = RecurrentNet(cell, features, hidden, outputs, num_layers, bidirectional, backend=backend)
    stats = measure(net, torch.zeros(2, steps, features))
    assert stats.params == sum(p.numel() for p in net.parameters())
    directions, gates = 1 + bidirectional, GATES[cell]
    inputs = [features] + [directions * hidden] * (num_layers - 1)  # each layer's F
    # Per step and direction, W_ih x and W_hh h: gates·H·(F + H) multiply-adds (the gates'
    # elementwise products are not MACs); then the head.
    recurrent = sum(directions * steps * gates * hidden * (f + hidden) for f in inputs)
    assert stats.macs == recurrent + directions * hidden * outputs > 0


@pytest.mark.parametrize("backend", ["ablab", "torch"])
def test_forget_bias_starts_every_forget_gate_open_and_survives_the_init_scheme(backend) -> None:
    from ablab.init import initialize

    net = RecurrentNet("lstm", 3, 8, 1, num_layers=2, bidirectional=True, backend=backend,
                       forget_bias=1.0)  # fmt: skip
    initialize(net, "xavier_uniform")  # zeroes the biases, then the model's own init runs
    biases = {n: p.detach() for n, p in net.recurrent.named_parameters() if ".bias_" in n}
    assert len(biases) == 8  # ih and hh, 2 layers, 2 directions
    for name, bias in biases.items():
        gates = bias.split(8)  # i, f, g, o
        assert torch.equal(gates[1], torch.full((8,), 1.0 if ".bias_ih" in name else 0.0)), name
        assert all(not g.any() for k, g in enumerate(gates) if k != 1), name


def test_an_open_forget_gate_carries_more_gradient_to_the_first_step() -> None:
    """f = σ(0) = 0.5 per step at init halves the cell path's gradient at every step back;
    forget_bias 1 (f ≈ 0.73) keeps more of it: what reaches x_0 from a loss at step 30 grows."""
    x = torch.randn(16, 30, 3)

    def first_step_gradient(forget_bias):
        torch.manual_seed(0)
        net = RecurrentNet("lstm", 3, 16, 1, forget_bias=forget_bias)
        x0 = x.clone().requires_grad_(True)
        net(x0).sum().backward()
        return x0.grad[:, 0].norm().item()

    assert first_step_gradient(1.0) > 10 * first_step_gradient(None)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_forget_bias_on_a_cell_without_a_forget_gate_is_one_line(cell) -> None:
    with pytest.raises(ConfigError) as err:
        RecurrentNet(cell, 3, 8, 1, forget_bias=1.0)
    assert "has no forget gate; it is for cell lstm, lstm_peephole" in str(err.value)
    assert "\n" not in str(err.value)
