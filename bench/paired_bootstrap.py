"""Time of a MIMIC-sized paired bootstrap analysis (cxr_core.bootstrap) on synthetic records.

Synthetic split: reference labels with MIMIC-like prevalence per label (present / uncertain / absent /
not mentioned); each configuration copies a reference value with its own probability (0.55 to 0.75, with a
small per-seed jitter) and otherwise writes a random one. Timed: drawing the image resamples once, then per
metric (label_f1_micro, label_f1_macro) one interval per configuration and a paired comparison of each
configuration against the first. Peak memory is the process's ``ru_maxrss`` (synthetic data included).
Target: under 60 s at the default sizes.

    python -m bench.paired_bootstrap
    python -m bench.paired_bootstrap --images 500 --configs 3 --seeds 2 --resamples 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter

import numpy as np

from cxr_core import bootstrap as bs
from cxr_core.labels import LABELS

METRICS = ("label_f1_micro", "label_f1_macro")
TARGET_SECONDS = 60
# (present, uncertain, absent) shares per label, roughly MIMIC-CXR's; the rest is "not mentioned".
PREVALENCE = {
    "Atelectasis": (0.20, 0.05, 0.01), "Cardiomegaly": (0.20, 0.03, 0.08),
    "Consolidation": (0.05, 0.02, 0.04), "Edema": (0.12, 0.06, 0.10),
    "Enlarged_Cardiomediastinum": (0.03, 0.04, 0.07), "Fracture": (0.02, 0.003, 0.01),
    "Lung_Lesion": (0.03, 0.005, 0.003), "Lung_Opacity": (0.23, 0.02, 0.01),
    "Pleural_Effusion": (0.24, 0.03, 0.13), "Pleural_Other": (0.01, 0.004, 0.001),
    "Pneumonia": (0.07, 0.08, 0.03), "Pneumothorax": (0.05, 0.005, 0.19),
    "Support_Devices": (0.30, 0.002, 0.01), "No_Finding": (0.33, 0.0, 0.0),
}  # fmt: skip


def synthetic_split(n_images: int, *, rng: np.random.Generator) -> np.ndarray:
    """(N, 14) reference label values 1.0 / -1.0 / 0.0 / NaN drawn with :data:`PREVALENCE` per label."""
    shares = np.array([PREVALENCE[name] for name in LABELS])  # (14, 3)
    u = rng.random((n_images, len(LABELS)))
    edges = np.cumsum(shares, axis=1)  # (14, 3): present | uncertain | absent | not mentioned
    out = np.full(u.shape, np.nan)
    for code, lo, hi in (
        (1.0, 0, edges[:, 0]),
        (-1.0, edges[:, 0], edges[:, 1]),
        (0.0, edges[:, 1], edges[:, 2]),
    ):
        out[(u >= lo) & (u < hi)] = code
    return out


def synthetic_config(
    truth: np.ndarray, *, n_seeds: int, keep: float, rng: np.random.Generator
) -> bs.SeedRecords:
    """One configuration: each seed copies a reference value with probability ~keep, else draws a random one."""
    keeps = np.clip(keep + rng.normal(0, 0.01, n_seeds), 0, 1)[:, None, None]
    other = np.stack([synthetic_split(truth.shape[0], rng=rng) for _ in range(n_seeds)])
    return bs.SeedRecords(np.where(rng.random(other.shape) < keeps, truth, other))


def analysis(truth: np.ndarray, configs: list[bs.SeedRecords], *, n_boot: int) -> dict:
    """The timed part: resamples, intervals and comparisons against the first configuration, per metric."""
    start = time.perf_counter()
    resampler = bs.Resampler(truth.shape[0], n_boot=n_boot, seed=0)
    drawn = time.perf_counter()
    intervals, comparisons = [], []
    for metric in METRICS:
        intervals += [bs.interval(truth, c, metric=metric, resampler=resampler) for c in configs]
        comparisons += [
            bs.compare(truth, c, configs[0], metric=metric, resampler=resampler) for c in configs[1:]
        ]
    done = time.perf_counter()
    return {"resampler_s": drawn - start, "analysis_s": done - start, "intervals": intervals,
            "comparisons": comparisons, "weights_mb": resampler.weights.nbytes / 2**20}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=13_000)
    p.add_argument("--configs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--resamples", type=int, default=1000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    truth = synthetic_split(args.images, rng=rng)
    keeps = np.linspace(0.55, 0.75, args.configs)
    configs = [synthetic_config(truth, n_seeds=args.seeds, keep=k, rng=rng) for k in keeps]
    data_s = time.perf_counter() - start
    run = analysis(truth, configs, n_boot=args.resamples)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "benchmark": "paired_bootstrap", "images": args.images, "configs": args.configs, "seeds": args.seeds,
        "resamples": args.resamples, "metrics": list(METRICS), "intervals": len(run["intervals"]),
        "comparisons": len(run["comparisons"]), "data_seconds": round(data_s, 3),
        "resampler_seconds": round(run["resampler_s"], 3), "analysis_seconds": round(run["analysis_s"], 3),
        "weights_mb": round(run["weights_mb"], 1), "peak_rss_mb": round(peak_mb, 1),
        "verdicts": dict(Counter(c["verdict"] for c in run["comparisons"])),
        "widest_interval": round(max(i["hi"] - i["lo"] for i in run["intervals"]), 4),
        "cpus": os.cpu_count(), "target_seconds": TARGET_SECONDS,
        "meets_target": run["analysis_s"] < TARGET_SECONDS,
    }  # fmt: skip
    print(
        f"{result['intervals']} intervals + {result['comparisons']} paired comparisons on {args.images:,} "
        f"images, {args.configs} configurations x {args.seeds} seeds, {args.resamples:,} resamples: "
        f"{run['analysis_s']:.2f} s (resamples drawn in {run['resampler_s']:.2f} s), peak RSS {peak_mb:.0f} MB"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
