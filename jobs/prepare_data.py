"""Prepare the split CSVs from a MIMIC-CXR-JPG root: views filtered (PA and AP by default), balanced per-label
sampling, and a multilabel-stratified 60/20/20 split grouped by patient, in the seed's column format, with
``manifest.json`` (inputs and their hashes, settings, counts, rows dropped and why) beside the CSVs.

Example (CPU, the embedded synthetic data):

    python -m jobs.make_synthetic --out data/synthetic
    python -m jobs.prepare_data --mimic-root data/synthetic --out data/demo --per-label 60

Real MIMIC-CXR-JPG, the NegBio labels, split by image as the seed did:

    python -m jobs.prepare_data --mimic-root /data/mimic-cxr-jpg/2.0.0 --out data/mimic-negbio \\
        --labeler negbio --split-by image
"""

from __future__ import annotations

import argparse
import json

from jobs._cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mimic-root", required=True, help="MIMIC-CXR-JPG root (holds mimic-cxr-2.0.0-*.csv(.gz), files/)"
    )
    p.add_argument("--out", required=True, help="folder for {train,val,test}_split.csv and manifest.json")
    p.add_argument("--per-label", type=int, default=5000, help="quota of images per label (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of the split")
    p.add_argument("--labeler", default="chexpert", choices=("chexpert", "negbio"), help="label file to use")
    p.add_argument("--views", default="PA,AP", help="ViewPosition values to keep, comma-separated, or 'all'")
    p.add_argument(
        "--split-by",
        default="patient",
        choices=("patient", "image"),
        help="keep each patient in one split (default) or split images independently (the seed's way)",
    )
    p.add_argument(
        "--check-images",
        default="exists",
        choices=("exists", "decode", "off"),
        help="check the sampled images: the file exists (default), it decodes fully (slow), or no check",
    )
    p.add_argument("--no-check-images", action="store_true", help="same as --check-images off")
    p.add_argument(
        "--image-policy",
        default="skip",
        choices=("skip", "error"),
        help="a missing or unreadable image: skip it (counted, in the manifest) or stop with an error",
    )
    p.add_argument("--workers", type=int, default=0, help="processes for --check-images decode (0 = all CPUs)")
    p.add_argument(
        "--fractions",
        default="0.6,0.2,0.2",
        help="train,val,test shares of the patients (default 0.6,0.2,0.2); a larger test share narrows test "
        "intervals at little cost",
    )
    return p.parse_args(argv)


def parse_fractions(text: str) -> tuple[float, ...]:
    from cxr_core.errors import CxrError

    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise CxrError(f"--fractions must be three numbers like 0.6,0.2,0.2, got {text!r}") from None


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from cxr_core.mimic import parse_views
    from cxr_core.prepare import prepare_splits

    manifest = prepare_splits(
        args.mimic_root,
        args.out,
        per_label=args.per_label,
        seed=args.seed,
        labeler=args.labeler,
        split_by=args.split_by,
        fractions=parse_fractions(args.fractions),
        check_images="off" if args.no_check_images else args.check_images,
        views=parse_views(args.views),
        image_policy=args.image_policy,
        workers=args.workers,
    )
    rows, dropped = manifest["rows"], manifest["dropped"]
    print(json.dumps({"sampled": manifest["counts"]["sampled"], "rows": rows, "dropped": dropped}))
    bad = manifest["dropped_images"]
    if bad:
        n_bad = dropped["missing_file"] + dropped["unreadable_file"]
        print(f"skipped {n_bad} missing or unreadable images, first:")
        for item in bad[:5]:
            print(f"  {item['path']}: {item['reason']}")
    print(
        f"wrote {args.out}/{{train,val,test}}_split.csv ({rows['train']} / {rows['val']} / {rows['test']} "
        f"rows) and {args.out}/manifest.json"
    )


if __name__ == "__main__":
    main()
