"""The torch.nn twin of ``rnncore.train``'s model, trained under the same rules.

    python -m rnncore.compare_torch --data FILE --time 600 --layers 2 --hidden 256 …

Same text, vocabulary, train/validation split, B contiguous streams of T-character
windows with the state carried across them, Adam, learning-rate schedule, global-norm
clipping and evaluation (``rnncore.train.evaluate``'s protocol: validation streams from a
fresh state, mean nats/char) — only the model is ``nn.Embedding → nn.LSTM/GRU/RNN →
nn.Linear`` and autograd computes the gradients. It trains until ``--time`` seconds (or
``--steps``) and prints one JSON line with the final validation loss, for putting beside
an ``rnncore.train`` run with the same flags.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from . import optim, train

LN2 = math.log(2.0)


def build_model(torch, cfg, vocab_size):
    nn = torch.nn
    cells = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    class TorchCharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, cfg["embed"])
            self.rnn = cells[cfg["cell"]](cfg["embed"], cfg["hidden"], cfg["layers"],
                                          dropout=cfg["dropout"])
            self.head = nn.Linear(cfg["hidden"], vocab_size)

        def forward(self, ids, state):
            out, state = self.rnn(self.embed(ids), state)
            return self.head(out), state

    return TorchCharLM()


def detach(state):
    return None if state is None else tuple(s.detach() for s in state) \
        if isinstance(state, tuple) else state.detach()


def evaluate(torch, model, streams, max_windows):
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for w in range(min(streams.windows, max_windows or streams.windows)):
            x, y = (torch.from_numpy(a.astype(np.int64)) for a in streams.window(w))
            logits, state = model(x, state)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             y.reshape(-1)))
            count += 1
    model.train()
    return total / count


def main(argv=None) -> int:
    import torch

    parser = train.build_parser()
    parser.prog = "python -m rnncore.compare_torch"
    cfg = vars(parser.parse_args(argv))
    train.check_config(cfg)
    if cfg["optimizer"] not in ("adam", "adamw"):
        raise SystemExit("compare_torch: only --optimizer adam/adamw is mirrored")
    torch.manual_seed(cfg["seed"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    corpus = train.load_text(cfg)
    vocab = train.Vocab.from_text(corpus.text)
    train_ids, val_ids = train.split_text(vocab.encode(corpus.text), cfg["val_fraction"])
    streams = train.Streams(train_ids, cfg["batch_size"], cfg["seq_len"], "cpu")
    val = train.Streams(val_ids, cfg["batch_size"], cfg["seq_len"], "cpu")
    eval_windows = max(1, cfg["eval_chars"] // (cfg["batch_size"] * cfg["seq_len"])) \
        if cfg["eval_chars"] else None
    model = build_model(torch, cfg, len(vocab.chars))
    Adam = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    opt = Adam(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
               eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    schedule = optim.Schedule(cfg["schedule"], cfg["lr"], warmup=cfg["warmup"],
                              total_steps=cfg["steps"], step_size=cfg["step_size"],
                              gamma=cfg["gamma"], min_lr=cfg["min_lr"])
    state, step, losses = None, 0, []
    start = time.perf_counter()
    while step < cfg["steps"]:
        w = step % streams.windows
        if w == 0:
            state = None
        x, y = (torch.from_numpy(a.astype(np.int64)) for a in streams.window(w))
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
        if cfg["time"] and time.perf_counter() - start >= cfg["time"]:
            break
    elapsed = time.perf_counter() - start
    val_loss = evaluate(torch, model, val, eval_windows)
    print(json.dumps({"impl": "torch.nn", "torch": torch.__version__, "steps": step,
                      "train_seconds": round(elapsed, 1), "val_loss": val_loss,
                      "val_bpc": val_loss / LN2, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
