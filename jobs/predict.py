"""Run an exported model on new images: one row per image with the generated report and its 14 labels.

    python -m jobs.predict exports/demo-best data/new/*.png --out predictions.csv
    python -m jobs.predict exports/demo-best data/new/ --out predictions.csv        # a folder: JPEG and PNG in it
    python -m jobs.predict exports/demo-best --csv data/demo/test_split.csv --image-root data/synthetic

MODEL_DIR is a folder written by jobs.export. Rows (CSV, in input order): path, status (ok or skipped), reason,
report, the 14 CheXpert labels as the report states them (1 present, 0 absent, -1 uncertain, blank: not
mentioned), unparsed (1 when a sentence matched no template sentence), sentence counts, uncertain_policy (how
the sweep's metrics counted -1). Generation length, batch size and precision are the sweep's (cxr_export.json);
a missing or unreadable image is skipped and named, or stops the run, per the sweep's image policy.
"""

from __future__ import annotations

import argparse

from jobs._cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_DIR", help="a folder written by jobs.export")
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files (JPEG, PNG) or folders of them")
    p.add_argument("--csv", help="a CSV of images: a path column relative to --image-root, or MIMIC's ids")
    p.add_argument("--image-root", help="the folder the --csv paths are relative to")
    p.add_argument("--out", help="the output CSV (default: standard output)")
    p.add_argument("--image-policy", choices=("skip", "error"),
                   help="a missing or unreadable image: skip it (named in the output) or stop (default: the "
                   "sweep's data.image_policy)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="images per generate call (default: the sweep's)")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the sweep's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_intermixed_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    import sys
    from pathlib import Path

    from cxr_core.errors import CxrError
    from cxr_core.predict import Progress, csv_images, find_images, load_exported, predict, read_settings
    from cxr_core.prepare import atomic_write_csv

    if bool(args.csv) != bool(args.image_root):
        raise CxrError("--csv and --image-root go together: the CSV's paths are relative to the image root")
    if args.csv and args.images:
        raise CxrError("pass images or --csv FILE --image-root DIR, not both")
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CxrError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    paths = csv_images(args.csv, args.image_root) if args.csv else find_images(args.images)  # before the model
    settings = read_settings(Path(args.model))
    for name in ("image_policy", "batch_size", "max_new_tokens"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    model, processor = load_exported(args.model)
    progress = None if args.quiet else Progress()
    frame = predict(model, processor, paths, settings=settings, device=args.device, progress=progress)
    skipped = frame[frame["status"] == "skipped"]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(frame, Path(args.out))
    else:
        frame.to_csv(sys.stdout, index=False)
    where = f" to {args.out}" if args.out else ""
    print(f"predict: wrote {len(frame):,} rows{where} ({len(frame) - len(skipped):,} reports, {len(skipped):,} "
          f"images skipped)", file=sys.stderr)  # fmt: skip
    for _, row in skipped.head(5).iterrows():
        print(f"skipped {row['path']}: {row['reason']}", file=sys.stderr)


if __name__ == "__main__":
    main()
