"""The main job: the whole study on the embedded default, end to end, on a CPU.

Makes the synthetic MIMIC-layout data if missing, prepares the splits, runs search_spaces/demo.yaml with
Ray Tune, analyses the results and prints where the report is.

    python -m jobs.demo                      # ~5-10 minutes on 2 cores
    python -m jobs.demo --name demo2 --set train.epochs=2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs._cli import main_guard

SYNTHETIC = Path("data/synthetic")
SPLITS = Path("data/demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/demo.yaml")
    p.add_argument("--name", default="demo", help="results go to ray_results/NAME (NAME-<time> if it exists)")
    p.add_argument("--per-label", type=int, default=50, help="per-label quota of the demo splits")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    from cxr_core.prepare import prepare_splits
    from cxr_core.synthetic import make_synthetic

    if not (SYNTHETIC / "mimic-cxr-2.0.0-metadata.csv.gz").is_file():
        print(f"[demo] writing the synthetic MIMIC-layout dataset to {SYNTHETIC}/ ...", flush=True)
        make_synthetic(SYNTHETIC)
    print(f"[demo] preparing splits in {SPLITS}/ (per-label quota {args.per_label}) ...", flush=True)
    summary = prepare_splits(SYNTHETIC, SPLITS, per_label=args.per_label, seed=0)
    print(f"[demo] splits: {summary['rows']}", flush=True)

    from cxr_core.space import load_study
    from cxr_core.tune_runner import init_ray, run_study

    study = load_study(args.space, overrides=args.overrides)
    init_ray()
    storage = Path("ray_results").resolve()
    name = args.name
    if (storage / name).exists():  # never overwrite an earlier run
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    grid = run_study(study, name=name, storage=str(storage), verbose=1)
    print(f"[demo] sweep done: {len(grid)} trials in {grid.experiment_path}", flush=True)

    from cxr_core.report_writer import write_report

    report = write_report(grid.experiment_path, metric=study.metric, mode=study.mode)
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s")
    print(f"[demo] report: {report}/summary.md (and trials.csv, *.png)")


if __name__ == "__main__":
    main()
