"""Do the rare findings get written with more epochs or repeat-factor sampling? Per-label test F1 of one FFT trial.

The demo's best FFT writes some findings that its images show (``bench.label_readability``: a linear probe reads
them) at F1 0 or near it: too few positive training images for the report generator. This trains the embedded GIT
with FFT on the demo's train split under each setting given, for a given number of epochs, without Tune and
without validation, then generates the test split's reports once and prints micro/macro F1 and per-label F1
(test). Each setting is ``SAMPLING:THRESHOLD:EPOCHS`` (``train.sampling``, ``train.repeat_threshold``,
``train.epochs``; cxr_core.config.TrainConfig); everything else is the demo's FFT arm, at each seed given.

For the four rare findings with 20 or more test positives it also says where a finding is lost (:func:`diagnose`):
whether the model, teacher-forced on the reference report, starts the finding's sentence with "evidence" rather
than "no" on its positive images, and what its greedy reports say for them (positive, negative, or nothing).

    python -m bench.rare_labels                                    # the settings in docs/benchmarks.md
    python -m bench.rare_labels --settings uniform:0.1:5 repeat_factor:1.0:10 --lr 1e-3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT = [
    "uniform:0.1:6",
    "repeat_factor:1.0:6",  # the demo's setting (search_spaces/demo.yaml)
    "repeat_factor:1.0:9",
]


RARE = ("Consolidation", "Enlarged_Cardiomediastinum", "Lung_Lesion", "Pneumothorax")


@torch.no_grad()
def diagnose(s, data, reports: list[str], labels=RARE) -> dict:
    """Where a finding is lost. Teacher-forced on the reference report up to the finding's sentence: does the model
    start the next sentence with "evidence" rather than "no" (``forced_auc`` over the positive and the explicitly
    negative images; ``forced_evidence_wins``: the share of positives where it does)? Through "evidence of" on a
    positive image: is the finding's name (each of its words) the most likely continuation (``forced_named``)? Free-running: what do its
    greedy reports say for the positive images (``greedy_positive`` / ``greedy_negative`` / ``greedy_unsaid``)?"""
    from sklearn.metrics import roc_auc_score

    from cxr_core.labels import LABELS
    from cxr_core.mini_report import label_phrase, parse_report

    tok = s.processor.tokenizer
    evidence, no = tok.convert_tokens_to_ids("evidence"), tok.convert_tokens_to_ids("no")
    s.model.eval()
    out = {}
    for label in labels:
        j, name = LABELS.index(label), tok(label_phrase(label), add_special_tokens=False).input_ids
        scores, positive, named = [], [], []
        for i, ids in enumerate(data.input_ids):
            value = data.labels[i, j]
            if value not in (0.0, 1.0):
                continue
            at = next(k for k in range(len(ids)) if ids[k : k + len(name)] == name)
            if (
                value == 1.0
            ):  # through "evidence of": are the name's words, one by one, the most likely next ones?
                pixels = data.pixel_values[torch.tensor([i])]
                prefix = torch.tensor([ids[: at + len(name) - 1]])
                after = s.model(pixel_values=pixels, input_ids=prefix).logits[0, -len(name) :]
                named.append(after.argmax(-1).tolist() == name)
            start = at - 2 if value == 1.0 else at - 3  # "evidence of N" / "no evidence of N"
            logits = s.model(
                pixel_values=data.pixel_values[torch.tensor([i])], input_ids=torch.tensor([ids[:start]])
            )
            last = logits.logits[0, -1].float()
            scores.append(float(last[evidence] - last[no]))
            positive.append(value == 1.0)
        scores, positive = np.array(scores), np.array(positive)
        said = [parse_report(reports[i]).values[j] for i in range(len(reports)) if data.labels[i, j] == 1.0]
        out[label] = {
            "positives": int(positive.sum()),
            "forced_auc": round(float(roc_auc_score(positive, scores)), 3)
            if 0 < positive.sum() < len(positive)
            else None,
            "forced_evidence_wins": round(float((scores[positive] > 0).mean()), 2) if positive.any() else None,
            "forced_named": round(float(np.mean(named)), 2) if named else None,
            "greedy_positive": int(sum(v == 1.0 for v in said)),
            "greedy_negative": int(sum(v == 0.0 for v in said)),
            "greedy_unsaid": int(sum(v != v for v in said)),
        }
    return out


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
        metrics, reports, _ = evaluate(s, s.val)
        diagnosis = diagnose(s, s.val, reports)
    per_label = {k: round(v["f1"], 3) for k, v in metrics["per_label"].items()}
    return {"setting": setting, "seed": seed, "train_seconds": round(seconds, 1), "test_f1_micro": round(metrics["label_f1_micro"], 3),
            "test_f1_macro": round(metrics["label_f1_macro"], 3), "per_label_f1": per_label,
            "diagnosis": diagnosis}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="data/demo", help="split folder (python -m jobs.demo makes data/demo)")
    p.add_argument("--images", default="data/synthetic")
    p.add_argument("--settings", nargs="+", default=DEFAULT, metavar="SAMPLING:THRESHOLD:EPOCHS")
    p.add_argument("--lr", type=float, default=1e-3, help="the demo's best FFT learning rate (default 1e-3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    p.add_argument(
        "--jobs", type=int, default=1, help="trials run side by side, one torch thread each (default 1)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = [(setting, seed) for setting in args.settings for seed in args.seeds]
    kw = dict(splits=args.splits, images=args.images, lr=args.lr)
    rows = []
    if args.jobs <= 1:
        for setting, seed in runs:
            rows.append(run(setting, seed=seed, **kw))
            print(json.dumps(rows[-1]), flush=True)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for row in pool.map(_run_one, [(setting, seed, kw) for setting, seed in runs]):
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"bench": "rare_labels", "lr": args.lr, "seeds": args.seeds, "rows": rows}
    print(json.dumps(result))
    return result


def _run_one(job) -> dict:
    setting, seed, kw = job
    torch.set_num_threads(1)
    return run(setting, seed=seed, **kw)


if __name__ == "__main__":
    main()
