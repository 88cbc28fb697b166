"""Do the rare findings get written with more epochs or repeat-factor sampling? Per-label test F1 of one FFT trial.

The demo's best FFT writes some findings that its images show (``bench.label_readability``: a linear probe reads
them) at F1 0: too few positive training images for the report generator. This trains the embedded GIT with FFT
on the demo's train split under each setting given, for a given number of epochs, without Tune and without
validation, then generates the test split's reports once and prints micro/macro F1 and per-label F1 (test).
Each setting is ``SAMPLING:THRESHOLD:EPOCHS`` (``train.sampling``, ``train.repeat_threshold``, ``train.epochs``;
cxr_core.config.TrainConfig); everything else is the demo's FFT arm at seed 0.

    python -m bench.rare_labels                                    # the settings in docs/benchmarks.md
    python -m bench.rare_labels --settings uniform:0.1:5 repeat_factor:1.0:10 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

DEFAULT = [
    "uniform:0.1:5",
    "repeat_factor:0.3:5",
    "repeat_factor:1.0:5",
    "uniform:0.1:10",
    "repeat_factor:1.0:10",
]


def run(setting: str, *, splits: str, images: str, lr: float, seed: int) -> dict:
    from cxr_core.config import trial_config
    from cxr_core.trial import MemoryMeter, evaluate, setup, train_epoch

    sampling, threshold, epochs = setting.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        # The trial evaluates its "val" split: here the test split, touched once, after the last epoch.
        for name, source in (("train", "train"), ("val", "test")):
            (Path(tmp) / f"{name}_split.csv").symlink_to(Path(splits, f"{source}_split.csv").resolve())
        cfg = trial_config({
            "method": "fft", "model": "embedded",
            "data": {"split_dir": tmp, "image_root": images},
            "train": {"epochs": int(epochs), "batch_size": 8, "lr": lr, "num_threads": 1, "precision": "bf16",
                      "weight_decay": 0.0, "warmup_ratio": 0.1, "grad_clip": 1.0, "seed": seed,
                      "sampling": sampling, "repeat_threshold": float(threshold)},
            "evaluation": {"max_new_tokens": 64, "batch_size": 64},
        })  # fmt: skip
        s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
        start = time.perf_counter()
        for epoch in range(int(epochs)):
            train_epoch(s, epoch)
        seconds = time.perf_counter() - start
        metrics, _, _ = evaluate(s, s.val)
    per_label = {k: round(v["f1"], 3) for k, v in metrics["per_label"].items()}
    return {"setting": setting, "train_seconds": round(seconds, 1), "test_f1_micro": round(metrics["label_f1_micro"], 3),
            "test_f1_macro": round(metrics["label_f1_macro"], 3), "per_label_f1": per_label}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="data/demo", help="split folder (python -m jobs.demo makes data/demo)")
    p.add_argument("--images", default="data/synthetic")
    p.add_argument("--settings", nargs="+", default=DEFAULT, metavar="SAMPLING:THRESHOLD:EPOCHS")
    p.add_argument("--lr", type=float, default=1e-3, help="the demo's best FFT learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for setting in args.settings:
        rows.append(run(setting, splits=args.splits, images=args.images, lr=args.lr, seed=args.seed))
        print(json.dumps(rows[-1]), flush=True)
    result = {"bench": "rare_labels", "lr": args.lr, "seed": args.seed, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
