"""Recurrent networks read many-to-one: Elman RNN, LSTM, peephole LSTM and GRU, one class.

The cell is a name (``rnn | lstm | lstm_peephole | gru``, ``ablab.layers.recurrent``: the gate
equations and their papers are there), the time loop and truncated BPTT are
``ablab.blocks.recurrent.Recurrent``'s, and the prediction is a linear map of the top layer's final
hidden state (both directions' when bidirectional): a class's logits or a value, one per sequence.
Named variants are ``conf/model/{rnn,lstm,lstm_peephole,gru}.yaml``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ablab.blocks.recurrent import Recurrent


class RecurrentNet(nn.Module):
    """y = head(h_T): the recurrence over x (N, T, F), its final hidden state through a linear
    layer, (N, num_outputs)."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_outputs: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
        bptt: int | None = None,
        backend: str = "ablab",
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.recurrent = Recurrent(
            cell,
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            nonlinearity=nonlinearity,
            dropout=dropout,
            bptt=bptt,
            backend=backend,
            forget_bias=forget_bias,
        )
        self.head = nn.Linear(hidden_size * (1 + bidirectional), num_outputs)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final hidden state, (N, D·H): forward direction first."""
        _, h = self.recurrent(x)
        return h.transpose(0, 1).flatten(1)  # (D, N, H) → (N, D, H) → (N, D·H)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))
