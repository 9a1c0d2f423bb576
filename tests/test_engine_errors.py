"""Bad input gets a ValueError/TypeError that names the argument."""

import numpy as np
import pytest

import rnncore
from rnncore import backend


@pytest.fixture
def lstm():
    return rnncore.LSTM(3, 4, num_layers=2, seed=0)


def x32(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize("x,error,match", [
    (x32(5), ValueError, "input must be 3-D"),
    (x32(2, 2, 2, 3), ValueError, "input must be 3-D"),
    (x32(5, 2, 7), ValueError, "input has 7 features"),
    (x32(0, 2, 3), ValueError, "at least one step"),
    (np.zeros((5, 2, 3), np.int64), TypeError, "input has dtype int64"),
    (np.zeros((5, 2, 3), np.float64), TypeError, "input has dtype float64"),
    ([[[0.0] * 3]], TypeError, "input must be a numpy or cupy array"),
])
def test_bad_input(lstm, x, error, match):
    with pytest.raises(error, match=match):
        lstm(x)


@pytest.mark.parametrize("hx,error,match", [
    (x32(2, 2, 4), TypeError, r"tuple \(h0, c0\)"),
    ((x32(2, 3, 4), x32(2, 2, 4)), ValueError, r"h0 must have shape \(2, 2, 4\)"),
    ((x32(2, 2, 4), x32(1, 2, 4)), ValueError, r"c0 must have shape \(2, 2, 4\)"),
    ((x32(2, 2, 4), np.zeros((2, 2, 4))), TypeError, "c0 has dtype float64"),
])
def test_bad_hx(lstm, hx, error, match):
    with pytest.raises(error, match=match):
        lstm(x32(5, 2, 3), hx)


def test_bad_gru_hx():
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 2, 4\)"):
        rnncore.GRU(3, 4)(x32(5, 2, 3), x32(1, 4, 4))


@pytest.mark.parametrize("lengths,error,match", [
    ([5], ValueError, r"lengths must hold one int per sequence \(2\)"),
    ([5, 6], ValueError, r"lengths must lie in \[1, 5\]"),
    ([5, 0], ValueError, r"lengths must lie in \[1, 5\]"),
    ([5.0, 2.0], TypeError, "lengths must be integers"),
])
def test_bad_lengths(lstm, lengths, error, match):
    with pytest.raises(error, match=match):
        lstm(x32(5, 2, 3), lengths=lengths)


def test_nan_and_inf_with_check_finite():
    gru = rnncore.GRU(3, 4, check_finite=True)
    for bad in (np.nan, np.inf):
        x = x32(5, 2, 3)
        x[1, 1, 1] = bad
        with pytest.raises(ValueError, match="input contains NaN or Inf"):
            gru(x)
    h0 = x32(1, 2, 4)
    h0[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="hx contains NaN or Inf"):
        gru(x32(5, 2, 3), h0)


def test_bad_dout(lstm):
    out, _ = lstm(x32(5, 2, 3))
    with pytest.raises(ValueError, match="dout must have the output's shape"):
        lstm.backward(x32(5, 2, 3))
    with pytest.raises(TypeError, match="dout has dtype float64"):
        lstm.backward(np.zeros(out.shape))


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        rnncore.RNN(2, 2).backward(x32(1, 1, 2))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(residual="dense"), ValueError, "residual must be one of"),
    (dict(init="he"), ValueError, "init must be one of"),
    (dict(init_state="random"), ValueError, "init_state must be one of"),
    (dict(dropout_mode="zoneout"), ValueError, "dropout_mode must be one of"),
    (dict(dropout=1.0), ValueError, "dropout must be a number in"),
    (dict(dtype="float16"), ValueError, "dtype must be 'float32' or 'float64'"),
    (dict(dtype=np.int32), ValueError, "dtype must be"),
    (dict(device="tpu"), ValueError, "device must be"),
    (dict(device=0), TypeError, "device must be a string"),
    (dict(impl="triton"), ValueError, "impl must be one of"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(num_layers=1.5), TypeError, "num_layers must be an int"),
    (dict(bidirectional="yes"), TypeError, "bidirectional must be a bool"),
    (dict(proj_size=4), ValueError, "proj_size must be smaller"),
    (dict(forget_bias=1.0, bias=False), ValueError, "forget_bias needs bias=True"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        rnncore.LSTM(3, 4, **kwargs)


def test_options_belonging_to_other_cells():
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        rnncore.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="proj_size: the gru cell does not take it"):
        rnncore.GRU(3, 4, proj_size=2)
    with pytest.raises(TypeError, match="forget_bias: the rnn_tanh cell does not take it"):
        rnncore.RNN(3, 4, forget_bias=1.0)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['reset_after'\]"):
        rnncore.LSTM(3, 4, reset_after=False)


def test_cuda_without_gpu_is_a_clear_error():
    if backend.cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="cuda"):
        rnncore.GRU(3, 4, device="cuda")


def test_device_mismatch_names_the_argument(monkeypatch):
    """A numpy array given to a cuda module (simulated: only the device is faked)."""
    gru = rnncore.GRU(3, 4)
    monkeypatch.setattr(gru, "device", backend.Device("cuda", 0))
    with pytest.raises(TypeError, match="input is a numpy array but the module is on cuda:0"):
        gru(x32(5, 2, 3))


def test_state_dict_errors(lstm):
    sd = lstm.state_dict()
    with pytest.raises(ValueError, match="missing"):
        lstm.load_state_dict({k: v for k, v in sd.items() if k != "weight_hh_l1"})
    sd["weight_hh_l0"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\] has shape"):
        lstm.load_state_dict(sd)


def test_more_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be"):
        rnncore.GRU(3, 4, dtype=None)
    with pytest.raises(TypeError, match="seed must be None or a non-negative int"):
        rnncore.GRU(3, 4, seed="abc")
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        rnncore.GRU(3, 4).load_state_dict(5)
    with pytest.raises(TypeError, match="input has dtype complex64"):
        rnncore.GRU(3, 4)(np.zeros((2, 1, 3), np.complex64))
    with pytest.raises(ValueError, match="lengths needs batched"):
        rnncore.GRU(3, 4)(x32(2, 3), lengths=[2])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_forget_bias_is_refused(value):
    with pytest.raises(ValueError, match="forget_bias must be a finite number"):
        rnncore.LSTM(3, 4, forget_bias=value)


@pytest.mark.parametrize("kwargs", [dict(num_layers=10**9), dict(hidden_size=10**7)])
def test_a_model_too_large_for_memory_is_refused_up_front(kwargs):
    """Refused before anything is allocated, with the memory it would need."""
    import time

    args = dict(input_size=3, hidden_size=4) | kwargs
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"would need about [\d.e+]+ GiB"):
        rnncore.LSTM(args.pop("input_size"), args.pop("hidden_size"), **args)
    assert time.perf_counter() - start < 5


def test_a_failed_move_leaves_the_module_where_it_was(monkeypatch):
    m = rnncore.LSTM(3, 4, seed=0)
    before = {k: v.copy() for k, v in m.params.items()}

    def refuse(*args, **kwargs):
        raise RuntimeError("cuda is not available here")

    monkeypatch.setattr(backend, "to_device", refuse)
    with pytest.raises(RuntimeError, match="cuda"):
        m.to("cuda")
    assert str(m.device) == "cpu" and m.xp is np
    assert all(type(v) is np.ndarray and np.array_equal(v, before[k])
               for k, v in m.params.items())
    m(x32(2, 1, 3))  # still works where it was


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex64", None, 3])
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises((TypeError, ValueError), match="dtype"):
        rnncore.LSTM(3, 4, dtype=dtype)


def _values():
    from hypothesis import strategies as st

    return st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                     st.sampled_from(["lstm", "gru", "layers", "stack", "orthogonal",
                                      "learned", "variational", "fused", "float64"]),
                     st.lists(st.integers(), max_size=2))


def test_random_constructor_arguments_end_in_a_module_or_a_clear_error(monkeypatch):
    """Property: any value for any option gives a module or a one-line TypeError/ValueError
    naming the problem, quickly, and never a module above the memory bound."""
    bound = 64 * 2**20
    monkeypatch.setenv("RNNCORE_MAX_PARAM_BYTES", str(bound))
    from hypothesis import given, settings
    from hypothesis import strategies as st

    names = list(rnncore.Options.field_names()[1:]) + ["input_size", "hidden_size"]

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(rnncore.cells.names()),
           st.dictionaries(st.sampled_from(names), _values(), max_size=4))
    def check(cell, kwargs):
        args = {"input_size": 3, "hidden_size": 4} | kwargs
        try:
            m = rnncore.Recurrent(cell, args.pop("input_size"), args.pop("hidden_size"),
                                  **args)
        except (TypeError, ValueError) as err:
            message = str(err)
            assert message and "\n" not in message
        else:
            assert 4 * sum(v.nbytes for v in m.params.values()) <= bound

    check()
