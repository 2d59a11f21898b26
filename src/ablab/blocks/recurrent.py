"""The time loop every recurrent cell shares: layers stacked, both directions, truncated BPTT.

``Recurrent(cell, input_size, hidden_size, ...)`` runs any cell of ``ablab.registry.CELL`` over
batch-first sequences (N, T, F) as ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` do: layer l > 0 reads the
outputs of layer l − 1, with dropout between layers (not after the last) while training; a
bidirectional layer runs a second cell over the reversed sequence and concatenates both outputs.

Two interchangeable backends, one table: ``ablab`` steps the cells written from the equations
(``ablab.layers.recurrent``: gates can be inspected and changed, the peephole LSTM exists), and
``torch`` calls PyTorch's fused modules (cuDNN on a GPU: the fast path) for rnn, lstm and gru. The
same weights give the same function: cell ``cells.l{k}[_reverse]``'s ``weight_ih`` is the fused
module's ``weight_ih_l{k}[_reverse]``, and so on for weight_hh, bias_ih and bias_hh. PyTorch's FLOP
counter (``ablab.complexity``) sees the fused modules' matmuls only where they decompose into
them (nn.RNN and nn.GRU on a CPU); the CPU's fused LSTM kernel and cuDNN count as zero MACs, so
measure with backend ablab.

Truncated back-propagation through time (Williams & Peng 1990; BPTT: Werbos 1990): with
``bptt=k`` the sequence is cut into chunks of k steps counted back from the last step (the first
chunk keeps the remaining T mod k) and the state passed between chunks is detached. The forward
pass is unchanged; the gradient of a loss on the last output reaches x_t for exactly the last k
steps (t ≥ T − k) and is zero before; a gradient never crosses a chunk boundary, in any layer.
``bptt=None`` back-propagates through the whole sequence. Truncation follows one time order, so it
applies to unidirectional nets only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablab.errors import ConfigError, unknown_choice
from ablab.layers.recurrent import State  # also fills the CELL registry
from ablab.registry import CELL

#: direction → the suffix PyTorch gives its parameters (``weight_ih_l0_reverse``)
DIRECTIONS = ("", "_reverse")


class CellStack(nn.Module):
    """Registered cells stepped over time, layer by layer; the state as nn.RNN lays it out."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        nonlinearity: str,
        dropout: float,
    ) -> None:
        super().__init__()
        make, directions = CELL[cell], DIRECTIONS[: 1 + bidirectional]
        self.num_layers, self.num_directions, self.dropout = num_layers, len(directions), dropout
        sizes = [input_size] + [hidden_size * len(directions)] * (num_layers - 1)
        self.cells = nn.ModuleDict(
            {
                f"l{layer}{suffix}": make(size, hidden_size, nonlinearity=nonlinearity)
                for layer, size in enumerate(sizes)
                for suffix in directions
            }
        )

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(N, T, F), state or None → outputs (N, T, D·H), state: tensors (layers·D, N, H)."""
        cells, finals = list(self.cells.values()), []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                cell = cells[index]
                if state is None:
                    s = cell.initial_state(x.shape[0], x.device, x.dtype)
                else:
                    s = tuple(t[index] for t in state)
                # The reverse direction reads the sequence backwards and writes its outputs back
                # in time order, so output t of both directions describes step t.
                steps = x.flip(1) if direction else x
                hs = []
                for x_t in steps.unbind(1):
                    h, s = cell(x_t, s)
                    hs.append(h)
                out = torch.stack(hs, dim=1)  # T x (N, H) → (N, T, H)
                outputs.append(out.flip(1) if direction else out)
                finals.append(s)
            x = torch.cat(outputs, dim=-1)
            if layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        return x, tuple(torch.stack(parts) for parts in zip(*finals, strict=True))


#: cell → PyTorch's fused module for it; the peephole LSTM has none
FUSED: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class FusedStack(nn.Module):
    """nn.RNN / nn.LSTM / nn.GRU (batch first), the state as a tuple like the cells'."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        nonlinearity: str,
        dropout: float,
    ) -> None:
        super().__init__()
        if cell not in FUSED:
            raise ConfigError(
                f"PyTorch has no fused '{cell}' cell for backend torch; valid: backend ablab with "
                f"{', '.join(CELL)}, backend torch with {', '.join(sorted(FUSED))}"
            )
        # nn.RNN is the only one with a nonlinearity argument; the gated cells were checked for tanh
        options = {"nonlinearity": nonlinearity} if FUSED[cell] is nn.RNN else {}
        self.rnn = FUSED[cell](
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout,
            bidirectional=bidirectional,
            **options,
        )

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(N, T, F), state or None → outputs (N, T, D·H), state: tensors (layers·D, N, H)."""
        hx = state if state is None or len(state) > 1 else state[0]  # nn.LSTM takes (h, c)
        out, hx = self.rnn(x, hx)
        return out, (hx,) if isinstance(hx, Tensor) else tuple(hx)


BACKENDS: dict[str, type[nn.Module]] = {"ablab": CellStack, "torch": FusedStack}


class Recurrent(nn.Module):
    """outputs, h_T = the ``cell`` recurrence over x (N, T, F), ``num_layers`` deep, in one or both
    directions; outputs (N, T, D·H) are the top layer's, h_T (D, N, H) its final hidden states."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
        bptt: int | None = None,
        backend: str = "ablab",
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        CELL[cell].check_nonlinearity(nonlinearity)  # before either backend builds anything
        self.forget_gate = CELL[cell].forget_gate
        if forget_bias is not None and self.forget_gate is None:
            gated = ", ".join(name for name in CELL if CELL[name].forget_gate is not None)
            raise ConfigError(
                f"forget_bias={forget_bias}: cell '{cell}' has no forget gate; it is for cell "
                f"{gated} (null leaves every bias to the init)"
            )
        self.hidden_size, self.forget_bias = hidden_size, forget_bias
        if backend not in BACKENDS:
            raise unknown_choice("recurrent backend", backend, BACKENDS)
        if bptt is not None and bptt < 1:
            raise ConfigError(f"bptt must be a positive number of steps or null, got {bptt}")
        if bptt is not None and bidirectional:
            raise ConfigError("bptt truncates one time order: set bptt=null or bidirectional=false")
        self.num_directions, self.bptt = 1 + bidirectional, bptt
        self.layers = BACKENDS[backend](
            cell, input_size, hidden_size, num_layers, bidirectional, nonlinearity, dropout
        )
        self.special_init()

    def special_init(self) -> None:
        """With ``forget_bias`` b: the forget gate's bias b_if + b_hf starts at b in every layer
        and direction (b_if = b, b_hf = 0), so f = σ(b + …) keeps the cell at the start: 1 is
        Jozefowicz et al. 2015's advice (after Gers et al. 2000), against σ(0) = 0.5 per step,
        which halves what reaches the first step at every step back. Run after the init scheme
        (``ablab.init.initialize``), which zeroes the biases."""
        if self.forget_bias is None:
            return
        rows = slice(self.forget_gate * self.hidden_size, (self.forget_gate + 1) * self.hidden_size)
        with torch.no_grad():
            for name, param in self.layers.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("bias_ih"):
                    param[rows] = self.forget_bias
                elif leaf.startswith("bias_hh"):
                    param[rows] = 0.0

    def chunks(self, x: Tensor) -> tuple[Tensor, ...]:
        """x split along time into the chunks truncated BPTT runs: k steps each, counted back
        from the last step."""
        if self.bptt is None:
            return (x,)
        steps = x.shape[1]
        head = steps % self.bptt
        return x.split([head] * (head > 0) + [self.bptt] * (steps // self.bptt), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        state, outputs = None, []
        for chunk in self.chunks(x):
            if state is not None:  # the truncation: no gradient flows into the earlier chunks
                state = tuple(s.detach() for s in state)
            out, state = self.layers(chunk, state)
            outputs.append(out)
        h = state[0][-self.num_directions :]  # the top layer's, forward then backward
        return torch.cat(outputs, dim=1), h
