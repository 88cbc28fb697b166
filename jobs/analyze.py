"""Analyse a sweep's results with Tune's own API and write the comparison report.

Trials that differ only by seed are aggregated into configurations (mean, sd, count, 95% t interval); the best
configuration per method and per LoRA preset is chosen on validation; summary.md states the verdict with the
numbers behind it. If jobs.evaluate has scored the test split (RESULTS/report/test_metrics.csv), those test
numbers are included; otherwise summary.md says the test split has not been evaluated. Works on a sweep still
running, with errored trials, or with one method: the summary names what is missing.

Example:

    python -m jobs.analyze ray_results/demo
    # -> ray_results/demo/report/{summary.md, configs.csv, trials.csv, epochs.csv, *.png}
    python -m jobs.evaluate ray_results/demo     # the test split, once; then the summary includes it
    python -m jobs.analyze ray_results/demo --out docs/example_report
    python -m jobs.analyze s3://bucket/ray_results/demo --out reports/demo     # a storage URI
"""

from __future__ import annotations

import argparse

from jobs._cli import add_objective_args, main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results folder or storage URI, e.g. ray_results/demo")
    p.add_argument("--out", help="report folder (default RESULTS/report; ./NAME-report for a URI)")
    add_objective_args(p)
    p.add_argument(
        "--margin",
        type=float,
        default=0.02,
        help="equivalence margin of the paired verdicts, absolute on the metric (default 0.02)",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=1000,
        help="bootstrap resamples for intervals and comparisons (default 1000)",
    )
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from cxr_core import faults
    from cxr_core.errors import CxrError
    from cxr_core.study_report import default_out, write_report

    if not args.margin >= 0:
        raise CxrError(f"--margin must be >= 0, got {args.margin}")
    if args.resamples < 100:
        raise CxrError(f"--resamples must be at least 100 for 95% percentile intervals, got {args.resamples}")
    try:
        out = write_report(args.results, out=args.out, metric=args.metric, mode=args.mode, margin=args.margin,
                           n_boot=args.resamples)  # fmt: skip
    except Exception as exc:
        target = args.out or default_out(args.results)
        if not faults.is_disk_full(exc, target):
            raise
        raise CxrError(
            f"no space left on device writing the report to {target} ({faults.free_space_text(target)}); the "
            "previous report, if any, is intact: free space there (or pass --out another folder), then run the "
            "command again"
        ) from None
    from cxr_core.study_report import answer_lines, report_files

    print(f"report written to {out}")
    print(report_files(out))
    answer = answer_lines(out)
    if answer:
        print("the answer:", *(f"  - {line}" for line in answer), sep="\n")
    if "://" not in args.results:
        from pathlib import Path

        from cxr_core.tracking import log_report

        run = log_report(Path(args.results), out)
        if run:
            print(f"report logged to MLflow as artifacts of the sweep's run {run}")
    import pandas as pd

    status = pd.read_csv(out / "trials.csv")["status"].fillna("UNKNOWN")
    unfinished = status[~status.isin(["TERMINATED", "ERROR"])]
    if len(unfinished):
        states = ", ".join(f"{n} {s}" for s, n in unfinished.value_counts().sort_index().items())
        print(f"note: this report is partial: {states} of {len(status)} trials (the sweep is still running or "
              "was interrupted); analyse again once it has finished")  # fmt: skip


if __name__ == "__main__":
    main()
