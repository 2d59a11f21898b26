"""Recurrent cells written from their equations, one time step each, by name in ``CELL``.

- ``rnn``: the Elman network (Elman 1990, "Finding structure in time"),
  h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), φ = tanh or ReLU (Le et al. 2015's IRNN).
- ``lstm``: long short-term memory (Hochreiter & Schmidhuber 1997) with the forget gate of Gers,
  Schmidhuber & Cummins 2000, "Learning to forget".
- ``lstm_peephole``: the LSTM whose gates also see the cell (Gers & Schmidhuber 2000, "Recurrent
  nets that time and count").
- ``gru``: the gated recurrent unit (Cho et al. 2014, "Learning phrase representations using RNN
  encoder-decoder"), in PyTorch's (and cuDNN's) form: the reset gate scales W_hn h + b_hn, where
  Cho et al. scale h before the product.

Every cell keeps PyTorch's layout, so ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` weights load by name
(``weight_ih_l0`` → ``weight_ih``...): the gates' rows stacked in PyTorch's order (LSTM: i, f, g, o;
GRU: r, z, n) in weight_ih (gates·H, F), weight_hh (gates·H, H), bias_ih and bias_hh (gates·H),
and PyTorch's init, every parameter ~ U(−1/√H, 1/√H). A cell maps (x_t, state) to (h_t, state),
the state a tuple: (h,) or (h, c), each (N, H).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablab.errors import ConfigError, unknown_choice
from ablab.registry import CELL

State = tuple[Tensor, ...]

#: φ of the Elman cell. Not ``ablab.registry.ACT``: nn.RNN offers exactly these two, and the
#: ``torch`` backend (``ablab.blocks.recurrent``) must compute the same function as the cells.
NONLINEARITY: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu}


class RecurrentCell(nn.Module):
    """One time step of a recurrent layer with ``gates`` blocks of H rows in PyTorch's layout."""

    #: blocks of H rows in weight_ih and weight_hh (1 for Elman, 4 for LSTM, 3 for GRU)
    gates: ClassVar[int] = 1
    #: tensors in the state: 1 (h) or 2 (h, c)
    num_states: ClassVar[int] = 1
    #: the values ``nonlinearity`` may take; the gated cells' equations fix tanh
    nonlinearities: ClassVar[tuple[str, ...]] = ("tanh",)
    #: which block of H rows is the forget gate's (None: the cell has none)
    forget_gate: ClassVar[int | None] = None

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh") -> None:
        super().__init__()
        self.check_nonlinearity(nonlinearity)
        self.input_size, self.hidden_size = input_size, hidden_size
        rows = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        self.reset_parameters()

    @classmethod
    def check_nonlinearity(cls, nonlinearity: str) -> None:
        """Raise a one-line ConfigError unless this cell computes with ``nonlinearity``."""
        if nonlinearity not in NONLINEARITY:
            raise unknown_choice("nonlinearity", nonlinearity, NONLINEARITY)
        if nonlinearity not in cls.nonlinearities:
            takers = ", ".join(name for name in CELL if nonlinearity in CELL[name].nonlinearities)
            raise ConfigError(
                f"{cls.__name__}'s equations fix nonlinearity {', '.join(cls.nonlinearities)}; "
                f"'{nonlinearity}' is for cell {takers}"
            )

    def affine(self, x: Tensor, h: Tensor) -> Tensor:
        """W_ih x + b_ih + W_hh h + b_hh: every gate's pre-activation at once, (N, gates·H)."""
        return F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)

    def reset_parameters(self) -> None:
        """PyTorch's RNN init: every parameter ~ U(−1/√H, 1/√H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """Zeros, as nn.RNN / nn.LSTM / nn.GRU start when given no state."""
        return tuple(
            torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
            for _ in range(self.num_states)
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


@CELL.register("rnn")
class ElmanCell(RecurrentCell):
    """h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)."""

    nonlinearities = ("tanh", "relu")

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh") -> None:
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        h = NONLINEARITY[self.nonlinearity](self.affine(x, h))
        return h, (h,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity}"


@CELL.register("lstm")
class LSTMCell(RecurrentCell):
    """i, f, o = σ(W_i* x_t + W_h* h_{t−1} + b), g = tanh(…); c_t = f⊙c_{t−1} + i⊙g,
    h_t = o⊙tanh(c_t).

    The forget gate f (Gers et al. 2000) lets the cell reset itself; without it (f = 1, the 1997
    LSTM) c can grow without bound on a continual input stream. Its bias starts like every other parameter, as in
    PyTorch (Jozefowicz et al. 2015 start it at 1: an init choice, not part of the cell).
    """

    gates = 4  # i, f, g, o
    num_states = 2  # h, c
    forget_gate = 1

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        i, f, g, o = self.affine(x, h).chunk(4, dim=-1)  # (N, 4H) → 4 x (N, H), PyTorch's order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


@CELL.register("lstm_peephole")
class PeepholeLSTMCell(LSTMCell):
    """The LSTM with peepholes: i = σ(W_ii x + W_hi h + w_ci⊙c_{t−1} + b_i), f likewise with
    w_cf⊙c_{t−1}, g as the LSTM's, c_t = f⊙c_{t−1} + i⊙g, o = σ(W_io x + W_ho h + w_co⊙c_t + b_o),
    h_t = o⊙tanh(c_t).

    Gers & Schmidhuber 2000 add the peepholes because a gate that sees only h cannot read the cell
    while o is closed (h ≈ 0), which precise timing needs. The peephole weights are diagonal
    (one weight per unit: the gate of unit j sees only cell j) and start as every parameter,
    U(−1/√H, 1/√H); with all three zero the cell is the LSTM.
    """

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh") -> None:
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity)
        self.weight_ci = nn.Parameter(torch.empty(hidden_size))
        self.weight_cf = nn.Parameter(torch.empty(hidden_size))
        self.weight_co = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()  # again, now that the peepholes exist: they share the init

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        i, f, g, o = self.affine(x, h).chunk(4, dim=-1)
        # i and f decide what c_{t−1} becomes, so they see c_{t−1}; o gates the new cell c_t.
        i, f = torch.sigmoid(i + self.weight_ci * c), torch.sigmoid(f + self.weight_cf * c)
        c = f * c + i * torch.tanh(g)
        h = torch.sigmoid(o + self.weight_co * c) * torch.tanh(c)
        return h, (h, c)


@CELL.register("gru")
class GRUCell(RecurrentCell):
    """r, z = σ(W_i* x_t + b_i* + W_h* h_{t−1} + b_h*), n = tanh(W_in x_t + b_in + r⊙(W_hn h_{t−1}
    + b_hn)); h_t = (1 − z)⊙n + z⊙h_{t−1}.

    The reset gate multiplies W_hn h + b_hn (PyTorch, cuDNN), not h inside the product (Cho et
    al. 2014): the two differ, and only this form lets W_hh h be computed once for all gates.
    """

    gates = 3  # r, z, n

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        x_r, x_z, x_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h  # z = 1 keeps the old state: the path gradients survive on
        return h, (h,)
