"""Training speed of ``train.precision: bf16`` (autocast on the CPU) against fp32, on the trial's own loop.

Same tiny model (the embedded tiny GIT, FFT), same batches, one process: the two precisions alternate for
several rounds (which one goes first alternates too); the median epoch times are compared and the mean
training loss of each is reported, so a speed-up bought with a broken loss would show.
speedup = fp32_time / bf16_time.

    python -m bench.cpu_precision
    python -m bench.cpu_precision --samples 256 --rounds 5 --batch-size 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from bench.step_overhead import _data


def epoch(model, processor, data, *, precision: str, batch_size: int, lr: float) -> tuple[float, float]:
    """One :func:`cxr_core.trial.train_epoch` at ``precision``: (seconds, mean training loss)."""
    from cxr_core.config import trial_config
    from cxr_core.trial import Setup, lr_lambda, train_epoch

    cfg = trial_config({"train": {"batch_size": batch_size, "lr": lr, "epochs": 1, "precision": precision}})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(-(-len(data) // batch_size), 0.1, "cosine"))
    s = Setup(
        cfg, model, processor, data, data, opt, sched, torch.device("cpu"), processor.tokenizer.pad_token_id
    )
    start = time.perf_counter()
    out = train_epoch(s, 0)
    return time.perf_counter() - start, out["train_loss"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--samples", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from cxr_core.model import load_model, load_processor

    torch.set_num_threads(args.threads)
    processor = load_processor(args.model)
    data = _data(processor, args.samples, seed=0)
    torch.manual_seed(0)
    base = load_model(args.model)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds + 1):  # round 0 warms up both paths and is not counted
        order = ("bf16", "fp32") if r % 2 else ("fp32", "bf16")  # ABBA: warm caches favour neither
        for precision in order:
            t, loss = epoch(copy.deepcopy(base), processor, data, precision=precision, batch_size=args.batch_size,
                            lr=1e-3)  # fmt: skip
            if r:
                times[precision].append(t)
                losses[precision].append(loss)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: None)()
    result = {"bench": "cpu_precision", "model": args.model, "samples": args.samples, "batch_size": args.batch_size,
              "rounds": args.rounds, "fp32_epoch_s": round(fp32, 4), "bf16_epoch_s": round(bf16, 4),
              "speedup": round(fp32 / bf16, 3), "fp32_train_loss": round(statistics.mean(losses["fp32"]), 4),
              "bf16_train_loss": round(statistics.mean(losses["bf16"]), 4), "cpu_amx": amx}  # fmt: skip
    print(f"fp32 {fp32:.3f} s/epoch, bf16 {bf16:.3f} s/epoch: bf16 is {fp32 / bf16:.2f}x as fast (AMX: {amx})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
