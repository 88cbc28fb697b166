"""Write the synthetic MIMIC-CXR-JPG stand-in (same layout, labels drawn into the pixels) for CPU runs and tests.

The same arguments always give byte-identical files. CPU example (~600 patients, ~2,500 images, well under a
minute on one core):

    python -m jobs.make_synthetic --out data/synthetic
    python -m jobs.make_synthetic --out /tmp/tiny --patients 20 --size 64 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time

from cxr_core.errors import CxrError
from cxr_core.synthetic import make_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to write (the MIMIC root a loader reads)")
    parser.add_argument("--patients", type=int, default=600, help="patients to draw (default 600, at least 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", type=int, default=256, help="side of the square images in pixels (default 256)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = make_synthetic(args.out, n_patients=args.patients, seed=args.seed, image_size=args.size)
    except CxrError as err:
        print(f"make_synthetic: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['patients']} patients, {summary['studies']} studies, {summary['images']} images "
        f"({summary['frontal_images']} frontal) of {args.size} px to {args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
