"""Issue 17: activation memory counted, cut, recomputed and refused up front.

- ``rnncore.memory.kept_bytes`` counts what a forward keeps, exactly (a tiny case by hand);
- the reference LSTM no longer keeps h_g, the compiled LSTM neither its feature-major h nor
  tanh(c);
- ``checkpoint_every`` (and ``memory="sqrt"``) gives gradients bitwise equal to the plain
  backward, in the reference and the compiled CPU driver, and passes the gradient check;
- a forward whose activations would not fit fails before allocating, naming the bytes and
  the recompute knob;
- a loop of calls holds one call's buffers: a forward frees the module's last cache before
  making its own, and the compiled driver's pool allocates nothing after the first call.
"""

import numpy as np
import pytest

import rnncore
from rnncore import memory, modules
from rnncore.buffer_pool import ALIGN
from rnncore.drivers import compiled_cpu
from rnncore.gradcheck import check_module_gradients
from rnncore.modules import Recurrent

needs_compiled = pytest.mark.skipif(not compiled_cpu.available(),
                                    reason="the compiled CPU driver cannot be built here")


def kept(module, x):
    module(x)
    return memory.kept_bytes(module._last[0])


# ----------------------------------------------------------------------------- accounting
def test_kept_bytes_counts_each_buffer_once():
    a = np.zeros((4, 5))  # 160 bytes
    b = np.zeros(3, np.float32)  # 12 bytes
    assert memory.kept_bytes({"a": a, "view": a[1:], "t": (a.T, [b, None]), "n": 3}) == 172


def test_kept_bytes_reference_lstm_by_hand():
    """LSTM, I 3, H 2, T 4, B 1, float64, reference driver. What the forward keeps:
    the input x (4·1·3 = 12 values), h, c and tanh(c) (4·1·2 = 8 values each), the gates
    (4·1·8 = 32 values: x_g itself, overwritten in place; h_g is not kept) and the initial
    (h0, c0) (2 + 2 values): 12 + 24 + 32 + 4 = 72 values = 576 bytes."""
    m = Recurrent("lstm", 3, 2, dtype="float64", impl="reference", seed=0)
    x = np.ones((4, 1, 3))
    assert kept(m, x) == 72 * 8
    m.backward(np.ones((4, 1, 2)))  # the lean cache still backpropagates


@needs_compiled
def test_kept_bytes_compiled_lstm_by_hand():
    """The compiled driver, same case: x (12), h batch-major (8), c (8), the gates (32),
    the initial state (4) and its feature-major copy (4): 68 values = 544 bytes (no
    feature-major copy of h, no tanh(c)); at B 2, 2·68 values. Each of the six arrays the
    driver allocates (its own copy of x, h, c, the gates, the two state copies) starts on a
    64-byte boundary (rnncore.buffer_pool.ALIGN), its buffer ALIGN bytes longer; the caller's
    x is not kept."""
    m = Recurrent("lstm", 3, 2, dtype="float64", impl="compiled", seed=0)
    assert kept(m, np.ones((4, 1, 3))) == 68 * 8 + 6 * ALIGN
    assert kept(m, np.ones((4, 2, 3))) == 2 * 68 * 8 + 6 * ALIGN


def test_recompute_keeps_less():
    x = np.random.default_rng(0).standard_normal((64, 4, 5))
    full = kept(Recurrent("lstm", 5, 16, dtype="float64", impl="reference"), x)
    lean = kept(Recurrent("lstm", 5, 16, dtype="float64", impl="reference",
                          checkpoint_every=8), x)
    # full: x + T·(h, c, tanh c, 4H gates); recompute: x + T·h + 8 checkpoints of (h, c)
    T, B, H, I = 64, 4, 16, 5
    assert full == 8 * (T * B * I + T * B * 7 * H + 2 * B * H)
    assert lean == 8 * (T * B * I + T * B * H + 8 * 2 * B * H + 2 * B * H)


# ----------------------------------------------------------------------------- recompute
def _run(cell, impl, lengths, bidir, **options):
    m = Recurrent(cell, 5, 7, num_layers=2, seed=1, impl=impl, dtype="float64",
                  bidirectional=bidir, **options)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 3, 5))
    out, state = m(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    dstates = tuple(rng.standard_normal(s.shape) for s in states)
    dx, dstate0 = m.backward(rng.standard_normal(out.shape),
                             dstates if len(dstates) > 1 else dstates[0])
    dstate0 = dstate0 if isinstance(dstate0, tuple) else (dstate0,)
    return [out, dx, *states, *dstate0] + [m.grads[n] for n in sorted(m.grads)]


IMPLS = ["reference", pytest.param("compiled", marks=needs_compiled)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("lengths", [None, [11, 7, 3]], ids=["dense", "lengths"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
def test_checkpoint_every_is_bitwise(impl, cell, lengths, bidir, monkeypatch):
    # small ∂z chunks in the compiled backward, so chunks and segments interleave
    monkeypatch.setattr(compiled_cpu, "CHUNK_BYTES", (3 * 4 * 7 * 3 * 8,) * 2)
    monkeypatch.setattr(compiled_cpu, "CHUNK_MIN_COLUMNS", 1)
    plain = _run(cell, impl, lengths, bidir)
    for options in ({"checkpoint_every": 1}, {"checkpoint_every": 3},
                    {"checkpoint_every": 4}, {"checkpoint_every": 11},
                    {"memory": "sqrt"}):
        got = _run(cell, impl, lengths, bidir, **options)
        for k, (a, b) in enumerate(zip(plain, got)):
            assert np.array_equal(a, b), (options, k)


@needs_compiled
def test_compiled_chunks_agree_with_the_reference(monkeypatch):
    monkeypatch.setattr(compiled_cpu, "CHUNK_BYTES", (2 * 4 * 7 * 3 * 8,) * 2)
    monkeypatch.setattr(compiled_cpu, "CHUNK_MIN_COLUMNS", 1)
    for cell in ("lstm", "gru", "rnn_tanh"):
        ref = _run(cell, "reference", [11, 7, 3], True)
        got = _run(cell, "compiled", [11, 7, 3], True, checkpoint_every=4)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_checkpoint_every_passes_the_gradient_check(impl):
    m = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=2,
                     impl=impl, checkpoint_every=2)
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    report = check_module_gradients(m, x, lengths=[5, 3])
    assert report.max_error < 1e-6, report.table()


def test_checkpoint_options_are_checked():
    with pytest.raises(ValueError, match="checkpoint_every"):
        Recurrent("lstm", 3, 4, checkpoint_every=-1)
    with pytest.raises(ValueError, match="memory"):
        Recurrent("lstm", 3, 4, memory="half")
    with pytest.raises(ValueError, match="one of them"):
        Recurrent("lstm", 3, 4, memory="sqrt", checkpoint_every=4)
    m = Recurrent("lstm", 3, 4, memory="sqrt")
    assert [m.checkpoint_steps(T) for T in (1, 4, 5, 4000)] == [0, 2, 3, 64]


def test_training_flag_reaches_the_module():
    from rnncore import runconfig
    from rnncore.charlm import CharLM

    cfg = runconfig.validate({**runconfig.DEFAULTS, "checkpoint_every": 16})
    model = CharLM.from_config(runconfig.for_model(cfg), 10)
    assert model.rnn.checkpoint_every == 16


# ----------------------------------------------------------------------------- refusing
def test_oversized_forward_fails_up_front(monkeypatch):
    m = Recurrent("lstm", 5, 16, num_layers=2, dtype="float32")
    spec, T, B = m.spec, 400, 8
    need = memory.activation_estimate(spec, T, B, 4)
    lean = memory.activation_estimate(spec, T, B, 4, every=20)
    assert lean < need / 2
    monkeypatch.setenv("RNNCORE_MAX_ACTIVATION_BYTES", str((need + lean) // 2))
    with pytest.raises(MemoryError) as err:
        m(np.zeros((T, B, 5), np.float32))
    text = str(err.value)
    assert "\n" not in text and str(need) in text and "checkpoint_every=20" in text
    assert m._last is None  # nothing ran
    lean_module = Recurrent("lstm", 5, 16, num_layers=2, dtype="float32", checkpoint_every=20)
    lean_module(np.zeros((T, B, 5), np.float32))  # the suggested knob fits


def test_estimate_covers_what_is_kept():
    """The estimate is an upper bound of the exact count of what the forward keeps."""
    for impl, k in (("reference", 0), ("reference", 8)):
        m = Recurrent("lstm", 5, 16, num_layers=2, dtype="float64", impl=impl,
                      checkpoint_every=k)
        x = np.zeros((64, 4, 5))
        assert kept(m, x) <= memory.activation_estimate(m.spec, 64, 4, 8, k)


def test_bad_limit_is_refused(monkeypatch):
    monkeypatch.setenv("RNNCORE_MAX_ACTIVATION_BYTES", "lots")
    with pytest.raises(ValueError, match="RNNCORE_MAX_ACTIVATION_BYTES"):
        memory.max_activation_bytes()


# ----------------------------------------------------------------------------- reuse
def test_a_forward_frees_the_last_calls_cache_before_making_its_own(monkeypatch):
    module = Recurrent("lstm", 3, 4, num_layers=2, dtype=np.float64, impl="reference")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    seen = []
    real = modules.stack_forward

    def recording(*args, **kwargs):
        seen.append(module.last_cache)
        return real(*args, **kwargs)

    monkeypatch.setattr(modules, "stack_forward", recording)
    module(x)
    module(x)
    assert seen == [None, None] and module.last_cache is not None


class CountingPool(compiled_cpu.BufferPool):
    """A buffer pool that counts the buffers it allocates."""

    allocated = 0

    def empty(self, shape, dtype):
        before = {id(b) for b in self._buffers}
        array = super().empty(shape, dtype)
        self.allocated += any(id(b) not in before for b in self._buffers)
        return array


@needs_compiled
@pytest.mark.parametrize("backward", [False, True])
def test_a_loop_of_calls_allocates_no_buffer_after_the_first(backward, monkeypatch):
    # hidden 256, batch 32, T 64: the gates (8 MiB a layer) and states are pooled; more
    # buffers than the pool's bound are in use at once
    pool = CountingPool(max_buffers=2)
    monkeypatch.setattr(compiled_cpu, "_POOL", pool)
    module = Recurrent("lstm", 256, 256, num_layers=2, dtype=np.float32, impl="compiled")
    x = np.random.default_rng(0).standard_normal((64, 32, 256)).astype(np.float32)
    dout = np.ones((64, 32, 256), np.float32)
    counts = []
    for _ in range(4):
        module(x)
        if backward:
            module.backward(dout)
        counts.append(pool.allocated)
    assert counts[0] > 2 and counts[1:] == [counts[0]] * 3
