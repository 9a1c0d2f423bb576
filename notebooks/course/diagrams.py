"""Diagrams of the cells and of the unrolled graph, drawn with matplotlib.

They are drawn from the same equations as rnncore's code (the gate order, which factor
each backward arrow carries), every time a notebook runs, so there is no image file to
fall out of date. Black solid arrows are the forward pass; red dashed arrows are the
backward pass, labelled with what they carry.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyBboxPatch

FORWARD = {"color": "black", "lw": 1.2}
BACKWARD = {"color": "tab:red", "lw": 1.1, "ls": (0, (4, 2))}
RESIDUAL = {"color": "tab:green", "lw": 1.4}
GATE_COLOURS = {"σ": "#f6d8a8", "tanh": "#b9d7f0"}


def _axes(ax, size, xlim, ylim, title):
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    ax.set_title(title)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def _box(ax, xy, text, width=0.9, height=0.6, colour="#eeeeee", fontsize=9):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.04", fc=colour, ec="black", lw=0.8,
                                zorder=3))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=4)


def _node(ax, xy, text, radius=0.28, fontsize=10):
    ax.add_patch(Circle(xy, radius, fc="white", ec="black", lw=0.8, zorder=3))
    ax.text(*xy, text, ha="center", va="center", fontsize=fontsize, zorder=4)


def _arrow(ax, start, end, style=FORWARD, curve=0.0, shrink=9):
    ax.annotate("", xy=end, xytext=start, zorder=2,
                arrowprops={"arrowstyle": "-|>", "shrinkA": shrink, "shrinkB": shrink,
                            "connectionstyle": f"arc3,rad={curve}", "mutation_scale": 9,
                            **style})


def _line(ax, points, style=FORWARD):
    xs, ys = zip(*points)
    ax.plot(xs, ys, zorder=1, **{k: v for k, v in style.items()})


def _label(ax, xy, text, colour="tab:red", fontsize=7.5, **kwargs):
    ax.text(*xy, text, color=colour, fontsize=fontsize, zorder=5, **kwargs)


def _legend(ax, xy, extra=()):
    x, y = xy
    rows = [("forward", FORWARD), ("backward", BACKWARD), *extra]
    for k, (text, style) in enumerate(rows):
        _line(ax, [(x, y - 0.35 * k), (x + 0.6, y - 0.35 * k)], style)
        ax.text(x + 0.75, y - 0.35 * k, text, va="center", fontsize=7.5)


def draw_lstm_cell(ax=None, backward=True, title=None):
    """One LSTM step: the c path on top, the four gates below, h out to the right.

    Backward arrows carry ∂c_t back along the c path (×f), ∂h_t into o and tanh(c_t),
    and ∂z (all four gates) back to h_{t−1} and x_t through the two products.
    """
    if title is None:
        title = "one LSTM step" + (": forward (black), backward (red)" if backward else "")
    ax = _axes(ax, (8.2, 4.6), (-0.6, 12.6), (-1.6, 7.4), title)
    c_in, mul_f, add, c_out = (0.4, 6), (3, 6), (5.6, 6), (11.6, 6)
    mul_ig, tanh_c, mul_o, h_out = (5.6, 4.4), (8.6, 4.4), (8.6, 2.6), (11.6, 2.6)
    gates = {"f": (3, 1.6, "σ"), "i": (4.6, 1.6, "σ"), "g": (6.2, 1.6, "tanh"),
             "o": (7.8, 1.6, "σ")}
    bus_y = 0.2
    ax.add_patch(FancyBboxPatch((1.6, -1.0), 8.2, 7.9, boxstyle="round,pad=0.1",
                                fc="#fafafa", ec="#bbbbbb", lw=0.8, zorder=0))

    # forward
    _node(ax, mul_f, "×")
    _node(ax, add, "+")
    _node(ax, mul_ig, "×")
    _node(ax, mul_o, "×")
    _box(ax, tanh_c, "tanh", colour=GATE_COLOURS["tanh"], width=0.8)
    ax.text(c_in[0] - 0.3, c_in[1] - 0.6, r"$c_{t-1}$", fontsize=10)
    ax.text(c_out[0] - 0.3, c_out[1] - 0.6, r"$c_t$", fontsize=10)
    _arrow(ax, c_in, mul_f)
    _arrow(ax, mul_f, add)
    _arrow(ax, add, c_out, shrink=0)
    _line(ax, [(tanh_c[0], c_out[1]), (tanh_c[0], tanh_c[1] + 0.3)])
    _arrow(ax, tanh_c, mul_o)
    _arrow(ax, mul_o, h_out, shrink=0)
    _arrow(ax, (10.4, mul_o[1]), (10.4, 7.2), shrink=0)
    ax.text(h_out[0] - 0.3, h_out[1] + 0.2, r"$h_t$", fontsize=10)
    ax.text(10.55, 7.0, r"$h_t$ (output)", fontsize=8)
    _line(ax, [(0.4, bus_y), (gates["o"][0], bus_y)])
    ax.text(-0.5, bus_y - 0.45, r"$h_{t-1}$", fontsize=10)
    _arrow(ax, (1.4, -1.4), (1.4, bus_y), shrink=0)
    ax.text(1.55, -1.35, r"$x_t$", fontsize=10)
    ax.text(1.7, bus_y + 0.15,
            r"$z = x_t W_{ih}^\top + h_{t-1} W_{hh}^\top + b$", fontsize=7)
    for name, (x, y, act) in gates.items():
        _arrow(ax, (x, bus_y), (x, y - 0.3), shrink=0)
        _box(ax, (x, y), f"{act}\n{name}", colour=GATE_COLOURS[act], fontsize=8)
    _arrow(ax, (gates["f"][0], gates["f"][1] + 0.3), mul_f)
    _arrow(ax, (gates["i"][0], gates["i"][1] + 0.3), mul_ig)
    _arrow(ax, (gates["g"][0], gates["g"][1] + 0.3), mul_ig)
    _arrow(ax, mul_ig, add)
    _arrow(ax, (gates["o"][0], gates["o"][1] + 0.3), mul_o)
    if not backward:
        return ax

    # backward, offset from the forward paths
    d = 0.32
    _arrow(ax, (c_out[0], c_out[1] + d), (add[0], add[1] + d), BACKWARD, shrink=0)
    _arrow(ax, (add[0], add[1] + d), (c_in[0], c_in[1] + d), BACKWARD, shrink=0)
    _label(ax, (6.3, 6.45), r"$\partial c_t$ (+ the path through $h_t$)")
    _label(ax, (0.2, 6.85), r"$\partial c_{t-1} = \partial c_t \odot f$")
    _arrow(ax, (h_out[0], h_out[1] - d), (mul_o[0] + 0.3, mul_o[1] - d), BACKWARD, shrink=0)
    _label(ax, (9.7, 1.45), r"$\partial h_t$ (from the output" "\n" "at t and from step t+1)",
           fontsize=7)
    _arrow(ax, (mul_o[0] + d, mul_o[1]), (tanh_c[0] + d, c_out[1] - 0.1), BACKWARD, shrink=0)
    _label(ax, (9.05, 4.9), r"$\partial h_t \odot o \odot (1-\tanh^2 c_t)$", fontsize=7)
    _arrow(ax, (mul_f[0] + d, mul_f[1] - 0.3), (gates["f"][0] + d, gates["f"][1] + 0.3),
           BACKWARD, shrink=0)
    _label(ax, (3.4, 3.3), r"$\partial c_t \odot c_{t-1}$", fontsize=7)
    _label(ax, (5.95, 3.35), r"$\partial c_t \odot g$, $\partial c_t \odot i$", fontsize=7)
    _arrow(ax, (mul_o[0] - d, mul_o[1] - 0.25), (gates["o"][0] + d, gates["o"][1] + 0.3),
           BACKWARD, shrink=0)
    _arrow(ax, (gates["i"][0] - d, bus_y + 0.05), (0.4, bus_y - d), BACKWARD, curve=-0.15,
           shrink=0)
    _label(ax, (2.0, -0.75), r"$\partial z = [\partial z_i, \partial z_f, \partial z_g, "
           r"\partial z_o]$:  $\partial h_{t-1} = \partial z\,W_{hh}$,"
           r"  $\partial x_t = \partial z\,W_{ih}$", fontsize=7)
    _legend(ax, (10.4, 0.6))
    return ax


def draw_gru_cell(ax=None, backward=True, title=None):
    """One GRU step (reset-after form): h on top, gates r and u, candidate n below.

    a^x and a^h are the input and recurrent products, cut into blocks r, u, n.
    """
    if title is None:
        title = "one GRU step (reset-after form)" + (
            ": forward (black), backward (red)" if backward else "")
    ax = _axes(ax, (8.2, 4.6), (-0.6, 12.6), (-1.6, 7.4), title)
    h_in, mul_u, add, h_out = (0.4, 6), (4.4, 6), (8.6, 6), (11.6, 6)
    mul_r, one_minus, mul_n = (5.2, 1.6), (7.0, 4.4), (8.6, 4.4)
    gates = {"r": (2.4, 1.6, "σ"), "u": (3.6, 3.2, "σ")}
    n_box = (7.0, 1.6)
    bus_y = 0.2
    ax.add_patch(FancyBboxPatch((1.4, -1.0), 8.4, 7.9, boxstyle="round,pad=0.1",
                                fc="#fafafa", ec="#bbbbbb", lw=0.8, zorder=0))
    _node(ax, mul_u, "×")
    _node(ax, add, "+")
    _node(ax, mul_r, "×")
    _node(ax, one_minus, "1−", fontsize=8)
    _node(ax, mul_n, "×")
    ax.text(h_in[0] - 0.6, h_in[1] - 0.6, r"$h_{t-1}$", fontsize=10)
    ax.text(h_out[0] - 0.3, h_out[1] - 0.6, r"$h_t$", fontsize=10)
    _arrow(ax, h_in, mul_u)
    _arrow(ax, mul_u, add)
    _arrow(ax, add, h_out, shrink=0)
    _line(ax, [(1.0, h_in[1]), (1.0, bus_y)])
    _line(ax, [(1.0, bus_y), (6.4, bus_y)])
    _arrow(ax, (1.6, -1.4), (1.6, bus_y), shrink=0)
    ax.text(1.75, -1.35, r"$x_t$", fontsize=10)
    ax.text(1.1, bus_y - 0.45, r"$a^x = x_t W_{ih}^\top + b_{ih}$,  "
            r"$a^h = h_{t-1} W_{hh}^\top + b_{hh}$", fontsize=7)
    for name, (x, y, act) in gates.items():
        _arrow(ax, (x, bus_y), (x, y - 0.3), shrink=0)
        _box(ax, (x, y), f"{act}\n{name}", colour=GATE_COLOURS[act], fontsize=8)
    _arrow(ax, (gates["r"][0] + 0.45, gates["r"][1]), mul_r, shrink=6)
    _arrow(ax, (mul_r[0], bus_y), mul_r, shrink=0)
    ax.text(mul_r[0] + 0.1, 0.6, r"$a^h_n$", fontsize=8)
    _arrow(ax, mul_r, (n_box[0] - 0.45, n_box[1]), shrink=6)
    _arrow(ax, (6.4, bus_y), (6.75, n_box[1] - 0.3), shrink=0)
    ax.text(6.55, 0.6, r"$a^x_n$", fontsize=8)
    _box(ax, n_box, "tanh\nn", colour=GATE_COLOURS["tanh"], fontsize=8)
    _arrow(ax, (gates["u"][0], gates["u"][1] + 0.3), mul_u)
    _arrow(ax, (gates["u"][0] + 0.45, gates["u"][1] + 0.1), one_minus, curve=-0.15)
    _arrow(ax, one_minus, mul_n)
    _arrow(ax, (n_box[0] + 0.45, n_box[1] + 0.2), mul_n, curve=0.35)
    _arrow(ax, mul_n, add)
    if not backward:
        return ax

    d = 0.32
    _arrow(ax, (h_out[0], h_out[1] + d), (add[0], add[1] + d), BACKWARD, shrink=0)
    _label(ax, (9.0, 6.45), r"$\partial h_t$")
    _arrow(ax, (mul_u[0], mul_u[1] + d), (h_in[0], h_in[1] + d), BACKWARD, shrink=0)
    _label(ax, (0.2, 6.85), r"$\partial h_{t-1} += \partial h_t \odot u$")
    _arrow(ax, (add[0] + d, add[1] - 0.3), (mul_n[0] + d, mul_n[1] + 0.3), BACKWARD, shrink=0)
    _label(ax, (9.1, 3.6), r"$\partial n = \partial h_t \odot (1-u)$", fontsize=7)
    _arrow(ax, (mul_u[0] + d, mul_u[1] - 0.3), (gates["u"][0] + d + 0.2, gates["u"][1] + 0.35),
           BACKWARD, shrink=0)
    _label(ax, (4.3, 3.0), r"$\partial u = \partial h_t \odot (h_{t-1} - n)$", fontsize=7)
    _arrow(ax, (n_box[0] - 0.45, n_box[1] - d), (mul_r[0] + 0.2, mul_r[1] - d), BACKWARD,
           shrink=0)
    _label(ax, (4.3, 2.15), r"$\partial r = \partial\mathrm{pre}_n \odot a^h_n$", fontsize=7)
    _label(ax, (2.0, -0.85),
           r"$\partial a^x = [\partial a_r, \partial a_u, \partial\mathrm{pre}_n]$,"
           r"  $\partial a^h = [\partial a_r, \partial a_u, r \odot \partial\mathrm{pre}_n]$,"
           r"  $\partial h_{t-1} += \partial a^h W_{hh}$", fontsize=7)
    _legend(ax, (10.4, 0.6))
    return ax


def draw_unrolled(ax=None, layers=3, steps=4, residual=False, focus=(2, None), title=None):
    """The stack unrolled through time and depth.

    Node (k, t) is layer k's state at step t. Every node's ∂L/∂h has two sources: from
    above (the output at t, or the layer above at t) and from the right (step t+1).
    ``focus`` = (t, k) marks one node and its two incoming backward arrows (k None: the
    top layer). With ``residual`` the green arcs are the identity paths that add each
    layer's input u_k to its output (u_{k+1} = layer_k(u_k) + u_k), forward (solid) and
    backward (dashed): the gradient skips the layer along them unchanged.
    """
    # Wider columns with residual arcs, so the labels by the focus node clear them.
    dx, dy, w, h = (3.2 if residual else 2.4), 1.7, 1.0, 0.62
    if title is None:
        title = (f"{layers} layers unrolled over {steps} steps" if layers > 1 else
                 f"one layer unrolled over {steps} steps")
        title += ", with residual connections" if residual else ""
    ax = _axes(ax, (0.7 * dx * steps + 3.4, 1.05 * layers + 2.0),
               (-1.7, dx * steps + 2.2), (-1.5, dy * layers + 0.9), title)
    t_focus, k_focus = focus
    k_focus = layers - 1 if k_focus is None else k_focus
    green_back = {**RESIDUAL, "ls": (0, (4, 2))}

    def at(k, t):
        return (dx * t + 0.4, dy * k + 0.2)

    top_y = at(layers - 1, 0)[1] + 1.25
    for t in range(steps):
        x, _ = at(0, t)
        ax.text(x, -1.4, f"$x_{t}$", ha="center", fontsize=9)
        _arrow(ax, (x, -1.1), (x, at(0, t)[1] - h / 2), shrink=0)
        ax.text(x, top_y + 0.1, f"$L_{t}$", ha="center", fontsize=9)
        ytop = at(layers - 1, t)[1]
        _arrow(ax, (x - 0.15, ytop + h / 2), (x - 0.15, top_y), shrink=0)
        _arrow(ax, (x + 0.15, top_y), (x + 0.15, ytop + h / 2), BACKWARD, shrink=0)
        for k in range(layers):
            x, y = at(k, t)
            colour = "#ffe2a8" if (k, t) == (k_focus, t_focus) else "#e8eef7"
            _box(ax, (x, y), f"$h^{{({k})}}_{t}$", width=w, height=h, colour=colour)
            if t + 1 < steps:
                _arrow(ax, (x + w / 2, y + 0.1), (x + dx - w / 2, y + 0.1), shrink=0)
                _arrow(ax, (x + dx - w / 2, y - 0.12), (x + w / 2, y - 0.12), BACKWARD,
                       shrink=0)
            if k + 1 < layers:
                _arrow(ax, (x - 0.15, y + h / 2), (x - 0.15, y + dy - h / 2), shrink=0)
                _arrow(ax, (x + 0.15, y + dy - h / 2), (x + 0.15, y + h / 2), BACKWARD,
                       shrink=0)
            if residual:
                below, above = (x - 0.3, y - h / 2 - 0.35), (x - 0.3, y + h / 2 + 0.45)
                _arrow(ax, below, above, RESIDUAL, curve=-0.6, shrink=0)
                _arrow(ax, (above[0] - 0.12, above[1]), (below[0] - 0.12, below[1]),
                       green_back, curve=0.75, shrink=0)
    for k in range(layers):
        ax.text(-1.65, at(k, 0)[1], f"layer {k}", va="center", fontsize=8)
    fx, fy = at(k_focus, t_focus)
    _label(ax, (fx + 0.25, fy + 0.5),
           "from the output at t" if k_focus == layers - 1 else "from the layer above",
           fontsize=7)
    if t_focus + 1 < steps:
        _label(ax, (fx + 0.55, fy - 0.5), "from step t+1", fontsize=7)
    extra = (("residual (identity)", RESIDUAL),) if residual else ()
    _legend(ax, (dx * steps - 0.6, at(layers - 1, 0)[1]), extra)
    return ax
