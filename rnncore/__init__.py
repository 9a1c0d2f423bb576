"""rnncore: deep recurrent networks with hand-written forward and backward passes."""

from .modules import GRU, LSTM, RNN

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN"]
