"""The recurrent models: shapes, the textbook choice of final states, and packing."""

import pytest
import torch

from deepstep.api import summary
from deepstep.models import create_model


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_recurrent_model_runs_forward_and_backward(name, bidirectional):
    model = create_model(
        name, num_classes=5, input_features=3, hidden=8, layers=2, dropout=0.1, bidirectional=bidirectional
    )
    x = torch.randn(4, 7, 3, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 5)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_a_two_directional_net_reads_the_forward_last_step_and_the_backward_first_step():
    torch.manual_seed(0)
    model = create_model("lstm", num_classes=1, input_features=2, hidden=4, bidirectional=True).eval()
    x = torch.randn(3, 6, 2)
    outputs, _ = model.rnn(x)  # (B, T, 2 * hidden): forward then backward halves
    expected = torch.cat([outputs[:, -1, :4], outputs[:, 0, 4:]], dim=1)
    assert torch.allclose(model(x), model.head(expected), atol=1e-6)


def test_padding_never_reaches_the_state_of_a_packed_sequence():
    torch.manual_seed(0)
    model = create_model("gru", num_classes=2, input_features=3, hidden=5, bidirectional=True).eval()
    short = torch.randn(1, 4, 3)
    padded = torch.cat([short, torch.full((1, 3, 3), 99.0)], dim=1)  # 3 steps of garbage padding
    alone = model(short)
    packed = model(padded, torch.tensor([4]))
    assert torch.allclose(alone, packed, atol=1e-6)


def test_summary_of_an_lstm_follows_the_given_time_and_features():
    result = summary("lstm", "30x4")
    assert result.rows[0].kind == "LSTM" and result.rows[0].output_shape == (30, 64)
    assert result.parameters == 4 * (64 * (4 + 64) + 2 * 64) + 65  # four gates, two biases, a 64 -> 1 head
