"""Recurrent networks for sequences: RNN, LSTM and GRU, one- or two-directional, with a linear head.

One module serves forecasting (the head maps the final state to the next `outputs` steps,
direct multi-step) and sequence classification (`outputs` = 1 logit for a binary target, else
one per class). The features the head reads are the last layer's final states: the forward
direction's state after the last step and, when bidirectional, the backward direction's state
after it has read back to the first step, as in the textbook. Variable lengths are packed, so
padding never enters a state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from deepstep.models.registry import register_model

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(nn.Module):
    """(B, T, F) sequences -> (B, outputs), from the final hidden states of a stacked RNN/LSTM/GRU."""

    def __init__(
        self,
        cell: str,
        input_features: int,
        outputs: int,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__()
        if input_features < 1 or outputs < 1 or hidden < 1 or layers < 1:
            raise ValueError("input_features, outputs, hidden and layers must be at least 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.bidirectional = bidirectional
        self.rnn = CELLS[cell](
            input_features,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,  # between stacked layers only
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, F)
        if lengths is not None:
            x = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, hidden); LSTM adds c
        # The last layer: forward direction after step T, backward direction after step 1.
        last = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]  # (B, hidden * directions)
        return self.head(self.dropout(last))  # (B, outputs)


def _register(cell: str, title: str) -> None:
    @register_model(
        cell,
        input_size=(30, 4),
        description=f"{title}: --hidden, --layers, --dropout, --bidirectional; input TIMExFEATURES",
    )
    def build(
        num_classes: int = 1,
        input_features: int = 4,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> nn.Module:
        # num_classes is the number of outputs: the horizon for forecasting, 1 for a binary target.
        return RecurrentNet(cell, input_features, num_classes, hidden, layers, dropout, bidirectional)


_register("rnn", "Elman RNN (tanh)")
_register("lstm", "LSTM")
_register("gru", "GRU")
