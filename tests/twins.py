"""rnncore modules and their torch.nn twins holding the same weights (tests only)."""

import numpy as np
import pytest

import rnncore

torch = pytest.importorskip("torch")

KINDS = {"lstm": (rnncore.LSTM, "LSTM"), "gru": (rnncore.GRU, "GRU"), "rnn": (rnncore.RNN, "RNN")}


def make_twins(kind, input_size, hidden_size, dtype="float64", **options):
    """(rnncore module, torch module) with identical parameters."""
    ours_cls, torch_name = KINDS[kind]
    ours = ours_cls(input_size, hidden_size, dtype=dtype, seed=0, **options)
    theirs = getattr(torch.nn, torch_name)(input_size, hidden_size, **{
        k: v for k, v in options.items() if k != "impl"})
    theirs = theirs.double() if dtype == "float64" else theirs.float()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(ours.params[name])))
    return ours, theirs


def run_torch(theirs, x, hx=None, dout=None, dstate=None, lengths=None):
    """Forward and backward in torch; returns numpy (out, states, dx, dstates, grads)."""
    batch_first = theirs.batch_first
    xt = torch.tensor(x, requires_grad=True)
    hxt = None
    if hx is not None:
        hxt = tuple(torch.tensor(h, requires_grad=True) for h in hx) \
            if isinstance(hx, tuple) else torch.tensor(hx, requires_grad=True)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out_p, state = theirs(packed, hxt)
        T = x.shape[1] if batch_first else x.shape[0]
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=batch_first,
                                                        total_length=T)
    else:
        out, state = theirs(xt, hxt)
    states = state if isinstance(state, tuple) else (state,)
    loss = (out * torch.tensor(dout)).sum()
    if dstate is not None:
        dstates = dstate if isinstance(dstate, tuple) else (dstate,)
        loss = loss + sum((s * torch.tensor(d)).sum() for s, d in zip(states, dstates))
    theirs.zero_grad()
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    dh = None
    if hx is not None:
        dh = tuple(h.grad.numpy() for h in hxt) if isinstance(hxt, tuple) else hxt.grad.numpy()
    return (out.detach().numpy(), tuple(s.detach().numpy() for s in states), xt.grad.numpy(),
            dh, grads)
