"""Reference solutions to the exercises of notebook 8 (the lecturer's copy).

The tests (``tests/test_course.py``, part of ``make test``) run notebook 8 with
``RNNCORE_COURSE_SOLUTIONS=1``: then every ``@exercise`` in it is
replaced by the function of the same name here, so CI proves that each exercise can be
solved and that its check accepts a right answer. The checks in ``course.grading`` do
not read this file (they compare against rnncore's own code and finite differences), so
a lecturer can delete it from the students' copy.
"""

import numpy as np


def lstm_step_backward(dh, dc, cache):
    """(∂L/∂z (B, 4H), ∂L/∂c_{t−1}) from ∂L/∂h_t, ∂L/∂c_t and the step's cache."""
    gates, c_prev, tanh_c = cache
    H = tanh_c.shape[-1]
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    dc = dc + dh * o * (1 - tanh_c ** 2)          # c_t also reaches L through h_t
    dz = np.concatenate([dc * g * i * (1 - i),     # z_i
                         dc * c_prev * f * (1 - f),  # z_f
                         dc * i * (1 - g ** 2),    # z_g
                         dh * tanh_c * o * (1 - o)],  # z_o
                        axis=1)
    return dz, dc * f


def gru_step_backward(dh, h_prev, cache, W_hh):
    """(∂L/∂a^x (B, 3H), ∂L/∂a^h (B, 3H), ∂L/∂h_{t−1}) from ∂L/∂h_t."""
    r, u, n, ah_n = cache
    dn = dh * (1 - u)
    du = dh * (h_prev - n)
    dpre_n = dn * (1 - n ** 2)                     # through the tanh
    dr = dpre_n * ah_n
    da_r, da_u = dr * r * (1 - r), du * u * (1 - u)
    da_x = np.concatenate([da_r, da_u, dpre_n], axis=1)
    da_h = np.concatenate([da_r, da_u, dpre_n * r], axis=1)
    return da_x, da_h, dh * u + da_h @ W_hh


def lstm_layer_backward(dout, dstate_n, W_hh, caches, step_backward):
    """BPTT through one LSTM layer: (∂L/∂z for every step (T, B, 4H), ∂L/∂W_hh,
    (∂L/∂h_0, ∂L/∂c_0))."""
    dh, dc = dstate_n                              # from h_n and c_n
    dW_hh = np.zeros_like(W_hh)
    dz_all = np.empty(dout.shape[:2] + (W_hh.shape[0],))
    for t in reversed(range(len(dout))):
        step_cache, h_prev = caches[t]
        dh = dh + dout[t]                          # the output at t + what t+1 sent back
        dz, dc = step_backward(dh, dc, step_cache)
        dW_hh += dz.T @ h_prev
        dh = dz @ W_hh                             # on to h_{t−1}
        dz_all[t] = dz
    return dz_all, dW_hh, (dh, dc)


def stack_backward(dout, dstates_n, layers, residual):
    """Backward through a stack: (∂L/∂x, [∂L/∂(initial state) of each layer])."""
    dy = dout                                      # ∂L/∂(top layer's output)
    dstates_0 = [None] * len(layers)
    for k in reversed(range(len(layers))):
        du, dstates_0[k] = layers[k].backward(dy, dstates_n[k])
        if residual:
            du = du + dy                           # u_{k+1} = layer_k(u_k) + u_k
        dy = du                                    # layer k's input is layer k−1's output
    return dy, dstates_0
