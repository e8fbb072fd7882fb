"""Language-model training speed of the lm_sentiment encoders on this machine (problem 4): predicted tokens per
second of a full training step (forward, backward, Adam) on batches shaped as the LM stage makes them.

Candidates (each with the adaptive-softmax head over a 10k vocabulary, chunks of --bptt tokens, batch --batch):
  bag_window-E-H   models/text_encoders.BagWindowEncoder (causal conv window 5 + running mean), embedding E, hidden H
  lstm-E-H, gru-E-H  models/text_encoders.RNNEncoder
and the original's LM (--faithful): windows of 10 tokens -> the next, embedding 100, LSTM 1000, full softmax, batch 128.

Synthetic ids with a Zipf distribution (the adaptive softmax's cost depends on how often the rare clusters are
hit), interleaved rounds, median of --rounds. Run under the shared CPU lock:
  flock /tmp/trainer-cpu.lock .venv/bin/python bench/lm_sentiment_encoders.py bag_window-256-256 lstm-128-256 --faithful
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.models.heads.adaptive_lm import AdaptiveSoftmaxHead
from trainer.models.text_encoders import BagWindowEncoder, RNNEncoder
from trainer.models.text_models import LanguageModel

VOCAB = 10002


def zipf_ids(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, VOCAB - 1, dtype=torch.float64)
    flat = torch.multinomial(weights, int(torch.tensor(shape).prod()), replacement=True, generator=generator)
    return (flat + 2).view(shape)


def build(name: str):
    kind, emb, hidden = name.split("-")
    emb, hidden = int(emb), int(hidden)
    if kind == "bag_window":
        encoder = BagWindowEncoder(VOCAB, emb, hidden, window=5)
    else:
        encoder = RNNEncoder(VOCAB, emb, hidden, cell=kind)
    return LanguageModel(encoder, VOCAB, decoder=False), AdaptiveSoftmaxHead(hidden, VOCAB)


def step_time(model, head, batch, steps: int) -> float:
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.Adam(params, 1e-3)

    def one():
        out = model(batch["x"])
        loss = head.loss(out, batch) if head is not None else F.cross_entropy(out, batch["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidates", nargs="*", default=["bag_window-256-256", "lstm-128-256", "gru-128-256"])
    p.add_argument("--faithful", action="store_true", help="also the original's windows LM (LSTM 1000, full softmax)")
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    seq = zipf_ids((args.batch, args.bptt + 1), g)
    chunk = {"x": seq[:, :-1], "y": seq[:, 1:]}
    runs = {name: (*build(name), chunk, args.batch * args.bptt) for name in args.candidates}
    if args.faithful:
        windows = zipf_ids((128, 11), g)
        lm = LanguageModel(RNNEncoder(VOCAB, 100, 1000), VOCAB, output="last", decoder=True)
        runs["faithful windows lstm-100-1000 full softmax"] = (lm, None, {"x": windows[:, :-1], "y": windows[:, -1]},
                                                               128)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, head, batch, tokens) in runs.items():
            rates[name].append(tokens / step_time(model, head, batch, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; predicted tokens per second "
          f"(median of {args.rounds} rounds of {args.steps} steps)")
    for name, values in rates.items():
        print(f"  {name:48s} {statistics.median(values):>10,.0f}   ({', '.join(f'{v:,.0f}' for v in values)})")


if __name__ == "__main__":
    main()
