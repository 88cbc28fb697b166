"""Sweep overhead: how much of the reserved trial slots is spent training rather than starting processes,
importing libraries, loading models and writing checkpoints.

Runs a fixed set of real trials (the embedded tiny GIT, FFT, synthetic data) on a local Ray instance with
``--slots`` one-CPU slots. Busy time of a trial = the wall time its own ``run_trial`` reports (setup,
training, evaluation, checkpoints); utilisation = sum of busy time / (slots x sweep wall time);
fixed cost per trial = (slots x wall time - sum of busy time) / trials.

    python -m bench.sweep_overhead                      # 4 trials of ~35 s on 2 slots, ~2 minutes
    python -m bench.sweep_overhead --trials 4 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--max-train", type=int, default=384, help="training rows per trial (sets trial length)")
    args = p.parse_args(argv)
    from cxr_core.prepare import prepare_splits
    from cxr_core.space import load_study
    from cxr_core.synthetic import make_synthetic
    from cxr_core.testing import two_arm_space
    from cxr_core.tune_runner import init_ray, results_frame, run_study

    tmp = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    make_synthetic(tmp / "mimic", n_patients=200, seed=0, image_size=128)
    prepare_splits(tmp / "mimic", tmp / "splits", per_label=40, seed=0)
    space = tmp / "space.yaml"
    space.write_text(two_arm_space(tmp / "splits", tmp / "mimic", name="overhead", metric="val_loss", mode="min",
                                   epochs=args.epochs, max_train=args.max_train, max_val=32, arms=("fft",),
                                   num_samples=args.trials))  # fmt: skip
    study = load_study(space)
    init_ray(num_cpus=args.slots)
    start = time.perf_counter()
    run_study(study, name="overhead", storage=str(tmp / "rr"), verbose=0)
    wall = time.perf_counter() - start
    import ray

    ray.shutdown()  # so no late worker log line follows the JSON
    frame = results_frame(tmp / "rr" / "overhead")
    busy = frame.groupby("trial_id")["wall_seconds"].max()
    utilisation = busy.sum() / (args.slots * wall)
    result = {"bench": "sweep_overhead", "trials": int(len(busy)), "slots": args.slots,
              "sweep_wall_s": round(wall, 1), "trial_busy_s_mean": round(float(busy.mean()), 1),
              "utilisation": round(float(utilisation), 3),
              "fixed_cost_per_trial_s": round((args.slots * wall - busy.sum()) / len(busy), 2),
              "target": "utilisation >= 0.85 for trials of 30 s or more"}  # fmt: skip
    print(f"{len(busy)} trials of {busy.mean():.0f} s on {args.slots} slots in {wall:.0f} s: utilisation "
          f"{utilisation:.2f}, fixed cost {result['fixed_cost_per_trial_s']} s per trial")  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
