"""Is each label's sign readable at the model's input? A linear probe per label, on the pixels and on the
frozen vision tower's tokens, against the generative model's own per-label F1.

A label the fine-tuned model never writes (F1 0) can mean two different things: its sign is not in the 64 px
input (then the data must change), or it is there and the report generator does not learn to use it within the
budget (then training must change). This tells them apart. For each label, a class-balanced logistic regression
is fitted on the train + validation images of a split folder and scored on its test images, on two inputs:

- ``pixels``: the 64 x 64 grey image exactly as the model's processor prepares it;
- ``vision tokens``: the embedded tiny GIT's pretrained, frozen image encoder output (65 tokens x 128), i.e.
  what the text decoder attends to before any fine-tuning.

A high AUC means a linear read-out of the sign exists in that input. Labels with fewer than 3 positive
training images (or no positive test image) are skipped. The last line printed is the table as JSON.

    python -m bench.label_readability                       # the demo's splits (python -m jobs.demo makes them)
    python -m bench.label_readability --splits data/demo --images data/synthetic --json out.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def features(
    split_dir: str, images: str, split: str, model, processor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels (N, H*W), vision tokens (N, T*D), positives (N, 14)) of one split, as the trial loads it."""
    from cxr_core.dataset import load_split
    from cxr_core.metrics import positives

    data = load_split(split_dir, split, image_root=images, processor=processor)
    pix, tok = [], []
    with torch.no_grad():
        for start in range(0, len(data.reports), 64):
            idx = list(range(start, min(start + 64, len(data.reports))))
            x = torch.as_tensor(data.pixel_values[idx], dtype=torch.float32)
            pix.append(x[:, 0].reshape(len(idx), -1).numpy())
            tok.append(model.git.image_encoder(pixel_values=x).last_hidden_state.reshape(len(idx), -1).numpy())
    return np.concatenate(pix), np.concatenate(tok), positives(data.labels)


def probe(train_x, train_y, test_x, test_y) -> dict:
    """Class-balanced logistic regression of one label: test AUC and F1 at 0.5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score

    clf = LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced").fit(train_x, train_y)
    p = clf.predict_proba(test_x)[:, 1]
    return {"auc": float(roc_auc_score(test_y, p)), "f1": float(f1_score(test_y, p > 0.5))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="data/demo", help="folder with train/val/test_split.csv")
    p.add_argument("--images", default="data/synthetic", help="image root")
    p.add_argument("--json", default="", help="also write the table here")
    p.add_argument("--labels", default="", help="comma-separated labels to probe (default: all 14)")
    args = p.parse_args(argv)

    from cxr_core.labels import LABELS
    from cxr_core.model import load_model, load_processor

    torch.manual_seed(0)
    processor = load_processor("embedded")
    model = load_model("embedded").eval()
    parts = {s: features(args.splits, args.images, s, model, processor) for s in ("train", "val", "test")}
    fit = [np.concatenate([parts["train"][k], parts["val"][k]]) for k in range(3)]
    test = parts["test"]
    rows = {}
    print(f"{'label':28s} {'train+val':>9s} {'test':>5s}   pixels AUC / F1   vision tokens AUC / F1")
    wanted = [x.strip() for x in args.labels.split(",") if x.strip()] or list(LABELS)
    unknown = sorted(set(wanted) - set(LABELS))
    if unknown:
        raise SystemExit(f"error: unknown label(s) {', '.join(unknown)}; choose from {', '.join(LABELS)}")
    for j, label in enumerate(LABELS):
        if label not in wanted:
            continue
        y, ty = fit[2][:, j], test[2][:, j]
        if y.sum() < 3 or ty.sum() < 1:
            continue
        row = {"train_positives": int(y.sum()), "test_positives": int(ty.sum())}
        row["pixels"] = probe(fit[0], y, test[0], ty)
        row["vision_tokens"] = probe(fit[1], y, test[1], ty)
        rows[label] = row
        px, vt = row["pixels"], row["vision_tokens"]
        print(f"{label:28s} {row['train_positives']:9d} {row['test_positives']:5d}   "
              f"{px['auc']:.2f} / {px['f1']:.2f}        {vt['auc']:.2f} / {vt['f1']:.2f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(json.dumps({"labels": rows}))
    return rows


if __name__ == "__main__":
    main()
