"""One time step of each cell: the pointwise math (fusable) and the recurrence around it.

``REFERENCE`` gathers the NumPy/CuPy pointwise functions under the names the fused CUDA
launcher (``rnncore.fused``) also provides, so a cell runs with either.
"""

from types import SimpleNamespace

from . import gru, lstm, rnn
from .gru import GRUCell
from .lstm import LSTMCell
from .rnn import RNNCell

REFERENCE = SimpleNamespace(
    name="reference",
    lstm_forward=lstm.pointwise_forward,
    lstm_backward=lstm.pointwise_backward,
    gru_forward=gru.pointwise_forward,
    gru_backward=gru.pointwise_backward,
    gru_gates_forward=gru.gates_forward,
    gru_candidate_forward=gru.candidate_forward,
    rnn_forward=rnn.pointwise_forward,
    rnn_backward=rnn.pointwise_backward,
)

__all__ = ["GRUCell", "LSTMCell", "RNNCell", "REFERENCE"]
