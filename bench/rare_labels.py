"""Do the rare findings get written with more epochs or repeat-factor sampling? Per-label test F1 of one FFT trial.

The demo's best FFT writes some findings that its images show (``bench.label_readability``: a linear probe reads
them) at F1 0 or near it: too few positive training images for the report generator. This trains the embedded GIT
with FFT on the demo's train split under each setting given, for a given number of epochs, without Tune and
without validation, then generates the test split's reports once and prints micro/macro F1 and per-label F1
(test). Each setting is ``SAMPLING:THRESHOLD:EPOCHS[:NAME_WEIGHT]`` (``train.sampling``,
``train.repeat_threshold``, ``train.epochs``, ``train.name_weight``, default 1; cxr_core.config.TrainConfig);
everything else is the demo's FFT arm, at each seed given.

For the four rare findings with 20 or more test positives it also says where a finding is lost (:func:`diagnose`):
whether the model, teacher-forced on the reference report, starts the finding's sentence with "evidence" rather
than "no" on its positive images, and what its greedy reports say for them (positive, negative, or nothing).

    python -m bench.rare_labels                                    # the settings in docs/benchmarks.md
    python -m bench.rare_labels --settings uniform:0.1:5 repeat_factor:1.0:10 --lr 1e-3 --seeds 0 1
    python -m bench.rare_labels --settings repeat_factor:1.0:6 repeat_factor:1.0:6:5   # finding names x5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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
    """Where a finding is lost, from one teacher-forced pass over each reference report that states it, and from the
    greedy reports:

    - ``forced_auc``: at the start of the finding's sentence, how well "evidence" over "no" (the logit difference)
      separates the positive from the explicitly negative images; ``forced_evidence_wins``: the share of positives
      where "evidence" is the likelier;
    - ``forced_named``: after "evidence of" on a positive image, the share where each word of the finding's name is
      the most likely next word;
    - ``greedy_positive`` / ``greedy_negative`` / ``greedy_unsaid``: what the greedy reports say for the positives;
    - ``train_positive`` / ``train_negative``: the training images that state the finding present / absent.
    """
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
            logits = s.model(pixel_values=data.pixel_values[torch.tensor([i])], input_ids=torch.tensor([ids]))
            text = logits.logits[0, -len(ids) :].float()  # GIT's logits: the image tokens', then the text's
            start = at - 2 if value == 1.0 else at - 3  # "evidence of N" / "no evidence of N"
            scores.append(float(text[start - 1, evidence] - text[start - 1, no]))  # position p predicts p + 1
            positive.append(value == 1.0)
            if value == 1.0:
                named.append(text[at - 1 : at - 1 + len(name)].argmax(-1).tolist() == name)
        scores, positive = np.array(scores), np.array(positive, dtype=bool)
        said = [parse_report(reports[i]).values[j] for i in range(len(reports)) if data.labels[i, j] == 1.0]
        both = 0 < positive.sum() < len(positive)
        out[label] = {
            "positives": int(positive.sum()),
            "forced_auc": round(float(roc_auc_score(positive, scores)), 3) if both else None,
            "forced_evidence_wins": round(float((scores[positive] > 0).mean()), 2) if positive.any() else None,
            "forced_named": round(float(np.mean(named)), 2) if named else None,
            "greedy_positive": int(sum(v == 1.0 for v in said)),
            "greedy_negative": int(sum(v == 0.0 for v in said)),
            "greedy_unsaid": int(sum(v != v for v in said)),
            "train_positive": int((s.train.labels[:, j] == 1.0).sum()),
            "train_negative": int((s.train.labels[:, j] == 0.0).sum()),
        }
    return out


def draws_per_epoch(
    train_labels: np.ndarray, sampling: str, threshold: float, labels=(*RARE, "No_Finding")
) -> dict:
    """How often an epoch draws, on average, a training image positive for each label (1.0 under uniform sampling;
    under repeat-factor sampling its weight over the mean weight, cxr_core.dataset.sample_weights; None for a label
    with no positive training image)."""
    from cxr_core.config import SAMPLINGS
    from cxr_core.dataset import sample_weights
    from cxr_core.errors import lookup
    from cxr_core.labels import LABELS

    if not lookup(SAMPLINGS, sampling, "train.sampling"):  # the same table the trial draws by
        return dict.fromkeys(labels, 1.0)
    w = sample_weights(train_labels, threshold)
    w = w / w.mean()
    out = {}
    for label in labels:
        drawn = w[train_labels[:, LABELS.index(label)] == 1.0]
        out[label] = round(float(drawn.mean()), 2) if drawn.size else None
    return out


def run(setting: str, *, splits: str, images: str, lr: float, seed: int) -> dict:
    from cxr_core.config import trial_config
    from cxr_core.trial import MemoryMeter, evaluate, setup, train_epoch

    sampling, threshold, epochs, *rest = setting.split(":")
    name_weight = float(rest[0]) if rest else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        # The trial evaluates its "val" split: here the test split, touched once, after the last epoch.
        for name, source in (("train", "train"), ("val", "test")):
            (Path(tmp) / f"{name}_split.csv").symlink_to(Path(splits, f"{source}_split.csv").resolve())
        cfg = trial_config({
            "method": "fft", "model": "embedded",
            "data": {"split_dir": tmp, "image_root": images},
            "train": {"epochs": int(epochs), "batch_size": 8, "lr": lr, "num_threads": 1, "precision": "bf16",
                      "weight_decay": 0.0, "warmup_ratio": 0.1, "grad_clip": 1.0, "seed": seed,
                      "sampling": sampling, "repeat_threshold": float(threshold), "name_weight": name_weight},
            "evaluation": {"max_new_tokens": 64, "batch_size": 64},
        })  # fmt: skip
        s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
        start = time.perf_counter()
        for epoch in range(int(epochs)):
            train_epoch(s, epoch)
        seconds = time.perf_counter() - start
        metrics, reports, _ = evaluate(s, s.val)
        diagnosis = diagnose(s, s.val, reports)
        draws = draws_per_epoch(s.train.labels, sampling, float(threshold))
    per_label = {k: round(v["f1"], 3) for k, v in metrics["per_label"].items()}
    return {"setting": setting, "seed": seed, "train_seconds": round(seconds, 1), "test_f1_micro": round(metrics["label_f1_micro"], 3),
            "test_f1_macro": round(metrics["label_f1_macro"], 3), "per_label_f1": per_label,
            "draws_per_epoch": draws, "diagnosis": diagnosis}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="data/demo", help="split folder (python -m jobs.demo makes data/demo)")
    p.add_argument("--images", default="data/synthetic")
    p.add_argument("--settings", nargs="+", default=DEFAULT, metavar="SAMPLING:THRESHOLD:EPOCHS[:NAME_WEIGHT]")
    p.add_argument("--lr", type=float, default=1e-3, help="the demo's best FFT learning rate (default 1e-3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    p.add_argument(
        "--jobs", type=int, default=1, help="trials run side by side, one torch thread each (default 1)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    jobs = [(setting, seed, dict(splits=args.splits, images=args.images, lr=args.lr))
            for setting in args.settings for seed in args.seeds]  # fmt: skip
    rows = []
    pool = (
        ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        if args.jobs > 1
        else None
    )
    with pool or contextlib.nullcontext():
        for row in (pool.map if pool else map)(_run_one, jobs):
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
