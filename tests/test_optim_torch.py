"""rnncore.optim's updates, clipping and schedules against torch.optim's."""

import math

import numpy as np
import pytest

from rnncore import optim

torch = pytest.importorskip("torch")

CASES = [
    ("sgd", {}, torch.optim.SGD, {}),
    ("sgd", {"momentum": 0.9}, torch.optim.SGD, {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, torch.optim.SGD,
     {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"weight_decay": 0.01}, torch.optim.Adam, {"weight_decay": 0.01}),
    ("adamw", {"weight_decay": 0.1}, torch.optim.AdamW, {"weight_decay": 0.1}),
    ("rmsprop", {"alpha": 0.9}, torch.optim.RMSprop, {"alpha": 0.9}),
    ("adagrad", {"eps": 1e-10}, torch.optim.Adagrad, {"eps": 1e-10}),
]


@pytest.mark.parametrize("kind,ours,torch_cls,theirs", CASES)
def test_updates_match_torch(kind, ours, torch_cls, theirs):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    tparams = [torch.tensor(params[k].copy(), requires_grad=True) for k in ("w", "b")]
    if kind in ("adam", "adamw", "rmsprop"):
        ours = {"eps": 1e-8, **ours}
        theirs = {"eps": 1e-8, **theirs}
    opt = optim.make_optimizer(kind, params, **ours)
    topt = torch_cls(tparams, lr=0.05, **theirs)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for t, k in zip(tparams, ("w", "b"), strict=True):
            t.grad = torch.tensor(grads[k].copy())
        opt.step(params, grads, 0.05)
        topt.step()
    for t, k in zip(tparams, ("w", "b"), strict=True):
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((3, 3))}
    grads = [{"w": rng.standard_normal((3, 3))} for _ in range(6)]
    a = optim.make_optimizer("adam", params)
    for g in grads[:3]:
        a.step(params, g, 0.01)
    arrays, scalars = a.state_dict()
    b = optim.make_optimizer("adam", {"w": params["w"].copy()})
    b.load_state_dict(arrays, scalars, "cpu")
    resumed = {"w": params["w"].copy()}
    for g in grads[3:]:
        a.step(params, g, 0.01)
        b.step(resumed, g, 0.01)
    np.testing.assert_array_equal(params["w"], resumed["w"])
    with pytest.raises(ValueError, match="adam"):
        optim.make_optimizer("sgd", params).load_state_dict(arrays, scalars, "cpu")


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(2)
    grads = {"a": rng.standard_normal((5, 5)), "b": rng.standard_normal(5)}
    tensors = [torch.tensor(grads[k].copy(), requires_grad=True) for k in ("a", "b")]
    for t, k in zip(tensors, ("a", "b"), strict=True):
        t.grad = torch.tensor(grads[k].copy())
    norm = optim.clip_grad_norm(grads, 1.5)
    tnorm = torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    assert float(norm) == pytest.approx(float(tnorm), rel=1e-12)
    for t, k in zip(tensors, ("a", "b"), strict=True):
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-6)
    assert math.sqrt(sum((g * g).sum() for g in grads.values())) == pytest.approx(1.5, rel=1e-5)


def test_schedules():
    cosine = optim.Schedule("cosine", 1.0, warmup=10, total_steps=110, min_lr=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.55)
    assert cosine(110) == pytest.approx(0.1) and cosine(500) == pytest.approx(0.1)
    step = optim.Schedule("step", 1.0, step_size=5, gamma=0.5)
    assert [step(s) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    assert optim.Schedule("constant", 0.3)(1000) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        optim.Schedule("linear")
