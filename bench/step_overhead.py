"""Overhead of the trial's own training loop against a bare forward/backward/optimizer loop.

Same tiny model (the embedded tiny GIT, FFT), same batches, same optimizer settings, one process:
the two loops alternate for several rounds (which one goes first alternates too) and the median epoch
times are compared.
overhead = trial_time / bare_time - 1.

    python -m bench.step_overhead
    python -m bench.step_overhead --samples 256 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def _data(processor, n: int, seed: int):
    import numpy as np

    from cxr_core.dataset import SplitData
    from cxr_core.labels import LABELS
    from cxr_core.mini_report import mini_report

    rng = np.random.default_rng(seed)
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, len(LABELS)), p=[0.2, 0.1, 0.05, 0.65])
    reports = [mini_report(list(v)) for v in values]
    size = processor.image_processor.crop_size["height"]
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ids = processor.tokenizer(reports)["input_ids"]
    return SplitData(pixel_values=pixels, input_ids=ids, reports=reports, labels=values)


def bare_epoch(model, data, *, batch_size: int, pad_id: int, lr: float, seed: int) -> float:
    """The minimal loop: batches in the same order, forward, backward, clip, AdamW step."""
    from cxr_core.dataset import batches

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    gen = torch.Generator().manual_seed(seed * 1000)
    start = time.perf_counter()
    for batch in batches(data, batch_size=batch_size, pad_id=pad_id, generator=gen):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def trial_epoch(model, processor, data, *, batch_size: int, lr: float, seed: int) -> float:
    """The trial's own :func:`cxr_core.trial.train_epoch` (schedule, token counting, accumulation...)."""
    from cxr_core.config import trial_config
    from cxr_core.trial import Setup, lr_lambda, train_epoch

    cfg = trial_config({"train": {"batch_size": batch_size, "lr": lr, "seed": seed, "epochs": 1}})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = -(-len(data) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, 0.1, "cosine"))
    s = Setup(
        cfg, model, processor, data, data, opt, sched, torch.device("cpu"), processor.tokenizer.pad_token_id
    )
    start = time.perf_counter()
    train_epoch(s, 0)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--samples", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from cxr_core.model import load_model, load_processor

    torch.set_num_threads(args.threads)
    processor = load_processor(args.model)
    data = _data(processor, args.samples, seed=0)
    torch.manual_seed(0)
    base = load_model(args.model)
    bare_times, trial_times = [], []
    for r in range(args.rounds + 1):  # round 0 warms up both paths and is not counted
        m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
        pad = processor.tokenizer.pad_token_id
        # Alternate which loop goes first (ABBA...), so warm caches favour neither.
        if r % 2:
            t = trial_epoch(m2, processor, data, batch_size=args.batch_size, lr=1e-4, seed=0)
            b = bare_epoch(m1, data, batch_size=args.batch_size, pad_id=pad, lr=1e-4, seed=0)
        else:
            b = bare_epoch(m1, data, batch_size=args.batch_size, pad_id=pad, lr=1e-4, seed=0)
            t = trial_epoch(m2, processor, data, batch_size=args.batch_size, lr=1e-4, seed=0)
        if r:
            bare_times.append(b)
            trial_times.append(t)
    bare, trial = statistics.median(bare_times), statistics.median(trial_times)
    result = {"bench": "step_overhead", "model": args.model, "samples": args.samples, "batch_size": args.batch_size,
              "rounds": args.rounds, "bare_epoch_s": round(bare, 4), "trial_epoch_s": round(trial, 4),
              "overhead": round(trial / bare - 1, 4), "target": "< 0.10"}  # fmt: skip
    print(
        f"bare loop {bare:.3f} s/epoch, trial loop {trial:.3f} s/epoch, overhead {100 * (trial / bare - 1):+.1f}%"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
