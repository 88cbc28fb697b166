"""Evaluate each method's best checkpoint (best on validation) on the test split, with every metric.

The test split is read here and nowhere else.

    python -m jobs.evaluate ray_results/demo                 # -> ray_results/demo/report/test_metrics.csv
    python -m jobs.evaluate ray_results/demo --by variant    # best per LoRA preset too
"""

from __future__ import annotations

import argparse

from jobs._cli import add_objective_args, main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results folder, e.g. ray_results/demo")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split to evaluate (default test)")
    add_objective_args(p)
    p.add_argument(
        "--by", default="method", choices=("method", "variant"), help="one best per method or per variant"
    )
    p.add_argument("--out", help="report folder (default RESULTS/report; ./NAME-report for a URI)")
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from pathlib import Path

    from cxr_core.evaluation import evaluate_best
    from cxr_core.study_report import default_out

    out = Path(args.out) if args.out else default_out(args.results)  # RESULTS/report, ./NAME-report for a URI
    table, per_label = evaluate_best(
        args.results, split=args.split, metric=args.metric, mode=args.mode, group_by=args.by, out=out
    )
    shown = [
        "group",
        "trial_id",
        *[c for c in table.columns if c.startswith("val_")],
        "label_f1_micro",
        "label_f1_macro",
        "label5_f1_macro",
        "bleu4",
    ]
    print(table[[c for c in shown if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out}/{args.split}_metrics.csv and {out}/{args.split}_per_label.csv")


if __name__ == "__main__":
    main()
