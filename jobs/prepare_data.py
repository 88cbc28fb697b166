"""Prepare the split CSVs from a MIMIC-CXR-JPG root: frontal views, balanced per-label sampling, and a
multilabel-stratified 60/20/20 split grouped by patient, in the seed's column format.

Example (CPU, the embedded synthetic data):

    python -m jobs.make_synthetic --out data/synthetic
    python -m jobs.prepare_data --mimic-root data/synthetic --out data/demo --per-label 60
"""

from __future__ import annotations

import argparse
import json

from jobs._cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mimic-root", required=True, help="MIMIC-CXR-JPG root (holds mimic-cxr-2.0.0-*.csv.gz, files/)"
    )
    p.add_argument("--out", required=True, help="folder for train_split.csv, val_split.csv, test_split.csv")
    p.add_argument("--per-label", type=int, default=5000, help="quota of images per label (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of the split")
    p.add_argument("--labeler", default="chexpert", choices=("chexpert", "negbio"))
    p.add_argument("--split-by", default="patient", choices=("patient", "image"))
    p.add_argument("--no-check-images", action="store_true", help="skip the existence check of image files")
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from cxr_core.prepare import prepare_splits

    summary = prepare_splits(
        args.mimic_root,
        args.out,
        per_label=args.per_label,
        seed=args.seed,
        labeler=args.labeler,
        split_by=args.split_by,
        check_images=not args.no_check_images,
    )
    rows = summary["rows"]
    print(json.dumps({k: summary[k] for k in ("sampled", "rows", "dropped_view", "dropped_missing_file")}))
    print(
        f"wrote {args.out}/{{train,val,test}}_split.csv: {rows['train']} / {rows['val']} / {rows['test']} rows"
    )


if __name__ == "__main__":
    main()
