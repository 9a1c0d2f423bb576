"""The torch.nn twin of ``rnncore.train``'s model, trained under the same rules.

    python -m rnncore.compare_torch --data FILE --time 600 --layers 2 --hidden 256 …

Same text, vocabulary, train/validation split, B contiguous streams of T-character
windows with the state carried across them, Adam, learning-rate schedule, global-norm
clipping and evaluation (``rnncore.train.evaluate``'s protocol: validation streams from a
fresh state, mean nats/char) — only the model is ``nn.Embedding → torch.nn.<family> →
nn.Linear`` and autograd computes the gradients. The recurrent layer is the cell's torch.nn
twin, read from its registry declaration (``cell.family``, ``cell.torch_options``); a cell
with no twin is refused. It trains until ``--time`` seconds (or ``--steps``), prints a JSON
line with the validation loss every ``--eval-every`` steps (``elapsed``: wall seconds from
the start of training to that step, earlier evaluations included, as ``rnncore.train``'s
metrics count them) and
one with the final validation loss, for putting beside an ``rnncore.train`` run with the
same flags. The learning-rate schedule's horizon is ``--schedule-steps`` (0:
``--steps``), as in ``rnncore.train``.

Flags the torch twin does not implement are refused with a one-line error rather than
dropped: ``--residual``, ``--init`` other than pytorch, ``--init-state`` other than zeros,
``--forget-bias``, ``--dropout-mode variational`` (with dropout), optimizers other than
adam/adamw, and the run-directory flags (``--resume``,
``--out``, ``--overwrite``, ``--format``), since nothing is written. ``--impl`` (rnncore's
kernel choice) and the reporting flags (``--eval-every``, ``--sample-length``,
``--temperature``, ``--plot``, ``--quiet``) do not change what is computed, and are ignored.
On ``--device cuda`` the twin runs cuDNN with TF32 off (IEEE float32, as rnncore's GEMMs),
and its clock is read after the GPU has finished the work queued before it.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from . import cells, optim, runconfig, train
from .corpora import CorpusError

LN2 = math.log(2.0)
PROG = "python -m rnncore.compare_torch"


class Unsupported(ValueError):
    """A flag the torch twin does not implement (one line, naming the flag)."""


def torch_twin(cfg):
    """The cell declaration and the torch.nn keyword arguments for ``cfg``'s recurrent
    layer; Unsupported naming the flag when torch.nn cannot compute the same model."""
    options = runconfig.model_options(cfg)
    cell = cells.get(options.cell)
    if not cell.family:
        raise Unsupported(f"--cell {cfg['cell']}: the {cell.name} cell has no torch.nn twin")
    refused = [
        ("--residual", options.residual is not None, cfg["residual"]),
        ("--init", options.init != "pytorch", options.init),
        ("--init-state", options.init_state != "zeros", options.init_state),
        ("--forget-bias", options.forget_bias != 0, options.forget_bias),
        ("--dropout-mode", options.dropout_mode != "standard" and options.dropout > 0,
         options.dropout_mode),
        ("--optimizer", cfg["optimizer"] not in ("adam", "adamw"), cfg["optimizer"]),
        ("--resume", cfg["resume"] is not None, cfg["resume"]),
        ("--out", cfg["out"] is not None, cfg["out"]),
        ("--overwrite", cfg["overwrite"], True),
        ("--format", cfg["format"] != "npz", cfg["format"]),
    ]
    for flag, given, value in refused:
        if given:
            raise Unsupported(f"{flag} {value}: the torch.nn twin does not implement it "
                              "(only adam/adamw, pytorch init, zero initial state, no "
                              "residual or forget bias, standard dropout; it writes "
                              "no files)")
    kwargs = dict(num_layers=options.num_layers, dropout=options.dropout,
                  bias=options.bias, **cell.torch_options)
    if options.proj_size:
        kwargs["proj_size"] = options.proj_size
    return cell, kwargs


def build_model(torch, cfg, vocab_size):
    nn = torch.nn
    cell, kwargs = torch_twin(cfg)
    rnn_class = getattr(nn, cell.family)
    width = cfg["proj_size"] or cfg["hidden"]

    class TorchCharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, cfg["embed"])
            self.rnn = rnn_class(cfg["embed"], cfg["hidden"], **kwargs)
            self.head = nn.Linear(width, vocab_size)

        def forward(self, ids, state):
            out, state = self.rnn(self.embed(ids), state)
            return self.head(out), state

    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    return TorchCharLM().to(dtype)


def detach(state):
    return None if state is None else tuple(s.detach() for s in state) \
        if isinstance(state, tuple) else state.detach()


def batch(torch, streams, w, device):
    """Window ``w``'s (inputs, targets) as int64 tensors on ``device``."""
    return (torch.from_numpy(a.astype(np.int64)).to(device) for a in streams.window(w))


def evaluate(torch, model, streams, max_windows, device):
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for w in range(min(streams.windows, max_windows or streams.windows)):
            x, y = batch(torch, streams, w, device)
            logits, state = model(x, state)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             y.reshape(-1)))
            count += 1
    model.train()
    return total / count


def error(message) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = train.build_parser()
    parser.prog = PROG
    cfg = vars(parser.parse_args(argv))
    try:
        train.check_config(cfg)
        torch_twin(cfg)
        corpus = train.load_text(cfg)
        vocab = train.Vocab.from_text(corpus.text)
        train_ids, val_ids = train.split_text(vocab.encode(corpus.text), cfg["val_fraction"])
        streams = train.Streams(train_ids, cfg["batch_size"], cfg["seq_len"], "cpu")
        val = train.Streams(val_ids, cfg["batch_size"], cfg["seq_len"], "cpu")
    except (ValueError, CorpusError) as err:
        return error(err)
    import torch

    torch.manual_seed(cfg["seed"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return error(f"--device {cfg['device']}: this torch has no usable CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def clock():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    eval_windows = max(1, cfg["eval_chars"] // (cfg["batch_size"] * cfg["seq_len"])) \
        if cfg["eval_chars"] else None
    model = build_model(torch, cfg, len(vocab.chars)).to(device)
    Adam = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    opt = Adam(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
               eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    schedule = optim.Schedule(cfg["schedule"], cfg["lr"], warmup=cfg["warmup"],
                              total_steps=cfg["schedule_steps"] or cfg["steps"],
                              step_size=cfg["step_size"],
                              gamma=cfg["gamma"], min_lr=cfg["min_lr"])
    state, step, losses = None, 0, []
    start = clock()
    while step < cfg["steps"]:
        w = step % streams.windows
        if w == 0:
            state = None
        x, y = batch(torch, streams, w, device)
        logits, state = model(x, detach(state))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if cfg["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0:
            losses.append(loss.item())
            print(f"step {step}  loss {losses[-1]:.4f}  {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        if step % cfg["eval_every"] == 0:
            at = clock() - start  # at the step, before the evaluation
            record = {"kind": "eval", "step": step,
                      "val_loss": evaluate(torch, model, val, eval_windows, device),
                      "elapsed": at}
            print(json.dumps(record), flush=True)
        if cfg["time"] and time.perf_counter() - start >= cfg["time"]:
            break
    elapsed = clock() - start
    val_loss = evaluate(torch, model, val, eval_windows, device)
    print(json.dumps({"impl": "torch.nn", "torch": torch.__version__, "steps": step,
                      "train_seconds": round(elapsed, 1), "val_loss": val_loss,
                      "val_bpc": val_loss / LN2, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
