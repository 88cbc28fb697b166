"""Analyse a sweep's results with Tune's own API and write the report folder.

Example:

    python -m jobs.analyze ray_results/demo
    # -> ray_results/demo/report/{trials.csv, epochs.csv, summary.md, *.png}
"""

from __future__ import annotations

import argparse

from jobs._cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results folder, e.g. ray_results/demo")
    p.add_argument("--out", help="report folder (default RESULTS/report)")
    p.add_argument("--metric", default="label_f1_micro", help="metric that defines the best trial")
    p.add_argument("--mode", default="max", choices=("max", "min"))
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from cxr_core.report_writer import write_report

    out = write_report(args.results, out=args.out, metric=args.metric, mode=args.mode)
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
