"""The main job: the whole study on the embedded default, end to end, on a CPU, ending with its answer.

Makes the synthetic MIMIC-layout data if missing, prepares the splits (a large test share: it is evaluated once,
for the chosen configurations only), runs search_spaces/demo.yaml with Ray Tune, scores the configurations
chosen on validation on the test split (once), analyses everything and prints the verdict.

    python -m jobs.demo                      # ~10 minutes on 2 cores
    python -m jobs.demo --name demo2 --set train.epochs=2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs._cli import main_guard

SYNTHETIC = Path("data/synthetic")
SPLITS = Path("data/demo")
PATIENTS = 450  # synthetic patients: ~1,450 frontal images, all of them used (MIMIC-like label prevalence)
FRACTIONS = (0.45, 0.15, 0.4)  # train / val / test: the test split is read once, so it can be large


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/demo.yaml")
    p.add_argument("--name", default="demo", help="results go to ray_results/NAME (NAME-<time> if it exists)")
    p.add_argument(
        "--per-label", type=int, default=5000, help="per-label quota of the demo splits (default: every image)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def _elapsed(start: float) -> float:
    """Seconds since the demo began: since scripts/demo.sh started (``CXR_DEMO_START``, set-up included) when
    it launched this, else since this process started."""
    import os

    began = os.environ.get("CXR_DEMO_START")
    return time.time() - float(began) if began else time.perf_counter() - start


def _data(per_label: int) -> None:
    from cxr_core.cache import default_cache_dir, forget_images_under
    from cxr_core.prepare import prepare_splits
    from cxr_core.synthetic import RENDER_VERSION, make_synthetic

    meta = SYNTHETIC / "mimic-cxr-2.0.0-metadata.csv.gz"
    stamp = SYNTHETIC / "demo-patients.txt"
    want = f"{PATIENTS} patients, render version {RENDER_VERSION}"
    if not meta.is_file() or not stamp.is_file() or stamp.read_text().strip() != want:
        print(f"[demo] writing the synthetic MIMIC-layout dataset to {SYNTHETIC}/ ...", flush=True)
        make_synthetic(SYNTHETIC, n_patients=PATIENTS)
        forget_images_under(default_cache_dir(), SYNTHETIC)  # same paths, new pixels: drop their cached pixels
        stamp.write_text(f"{want}\n")
    summary = prepare_splits(SYNTHETIC, SPLITS, per_label=per_label, seed=0, fractions=FRACTIONS)
    rows = summary["rows"]
    print(f"[demo] splits in {SPLITS}/: {rows['train']} train, {rows['val']} val, {rows['test']} test images",
          flush=True)  # fmt: skip


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    _data(args.per_label)

    from cxr_core.console import quiet_driver
    from cxr_core.space import load_study
    from cxr_core.tune_runner import init_ray, resolved_trials, run_study, stop_ray

    study = load_study(args.space, overrides=args.overrides)
    storage = Path("ray_results").resolve()
    name = args.name
    if (storage / name).exists():  # never overwrite an earlier run
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = quiet_driver(storage / name, verbose=False)
    print(f"[demo] sweep {name}: {len(resolved_trials(study))} trials; Ray's messages go to {log}", flush=True)
    init_ray()
    quiet_driver(storage / name, verbose=False)  # again: ray.init sets its console handler up anew
    grid = run_study(study, name=name, storage=str(storage), verbose=1)
    stop_ray()
    results = Path(grid.experiment_path)
    print(f"[demo] sweep done: {len(grid)} trials in {results}", flush=True)

    from cxr_core.evaluation import evaluate_best
    from cxr_core.study_report import default_out, write_report

    print("[demo] scoring the configurations chosen on validation on the test split (once) ...", flush=True)
    evaluate_best(results, group_by="method", out=default_out(results))  # the sweep's own metric and mode
    report = write_report(results)
    from cxr_core.study_report import answer_lines, report_files

    print(f"[demo] {report_files(report)}")
    print(f"[demo] finished in {_elapsed(start):.0f} s (set-up included); the answer:")
    for line in answer_lines(report, study.metric):
        print(f"  - {line}")


if __name__ == "__main__":
    main()
