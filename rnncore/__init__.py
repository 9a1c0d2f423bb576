"""rnncore: deep recurrent networks with hand-written forward and backward passes."""

from . import cells
from .modules import GRU, LSTM, RNN, Recurrent
from .options import Options

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "Recurrent", "Options", "cells"]
