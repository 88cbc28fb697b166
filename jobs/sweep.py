"""Run a search space (YAML) as a Ray Tune sweep: FFT and LoRA arms, each with its own ranges.

Example (CPU, embedded default, a few minutes):

    python -m jobs.sweep search_spaces/demo.yaml --name demo
    python -m jobs.sweep search_spaces/demo.yaml --set train.epochs=1 --name quick
    python -m jobs.sweep search_spaces/demo.yaml --address auto --storage /mnt/nfs/ray_results   # a cluster
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from jobs._cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="search-space YAML, e.g. search_spaces/demo.yaml")
    p.add_argument("--name", help="experiment name (default: the space's name); results in STORAGE/NAME")
    p.add_argument("--storage", help="results root: a local or NFS path, or a URI such as s3://bucket/path "
                   "(default ray_results/)")  # fmt: skip
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--require-gpu", action="store_true", help="refuse to train an arm given a GPU share "
                   "(resources.gpu > 0) where CUDA is unavailable, checked before any training (sets "
                   "resources.require_gpu); without it such trials train on the CPU and the sweep says so")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the defaults, e.g. --set train.epochs=2 (repeatable)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="check the data, build every trial's model, train "
                   "nothing; print and write the plan (seeds, parameter counts, estimated memory)")  # fmt: skip
    p.add_argument("--model", help="with --dry-run: plan for this model instead (e.g. arch:git-base)")
    p.add_argument("--plan-out", help="with --dry-run: where the plan goes (default: STORAGE/plans/NAME.csv)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep STORAGE/NAME")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: retry errored trials too")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard, bound to 127.0.0.1")
    p.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="how long to wait for the cluster "
                   "(--address) and the storage (--storage) to answer before giving up (default "
                   "$CXR_CONNECT_TIMEOUT, else 20)")  # fmt: skip
    p.add_argument(
        "--quiet", action="store_true", help="no live table while the sweep runs (errors still print)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Ray Tune's own output, library warnings and "
                   "per-trial logs on the console (default: the sweep's table; the rest in STORAGE/NAME/driver.log)")  # fmt: skip
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="also log every trial as an MLflow run (default store: STORAGE/NAME/mlflow.db)",
    )
    return p.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from cxr_core import driver_lock, faults
    from cxr_core.errors import CxrError

    timeout = faults.connect_timeout(args.connect_timeout)
    storage = args.storage or "ray_results"
    if not args.dry_run:  # first, and before the heavy imports: an unreachable cluster or storage fails at once
        if args.address:
            faults.probe_cluster(args.address, timeout=timeout)
        faults.probe_storage(storage, timeout=timeout)  # a write and a delete, bounded, leaving nothing
    from cxr_core.space import check_name, check_splits, load_study

    overrides = args.overrides + ([f"model={args.model}"] if args.model else [])
    overrides += ["resources.require_gpu=true"] if args.require_gpu else []
    study = load_study(args.space, overrides=overrides)  # validates every arm before Ray starts
    from cxr_core.tune_runner import (
        check_local_gpus,
        fault_lines,
        gpu_fallback_line,
        init_ray,
        probe_cluster_gpus,
        results_exist,
        resume_study,
        run_study,
        stop_ray,
        trial_statuses,
    )

    if args.dry_run:
        check_splits(study)  # the same data checks as a real sweep
        name = check_name(args.name) if args.name else study.name
        local = args.storage if args.storage and "://" not in args.storage else "ray_results"
        return dry_run(study, out=args.plan_out or str(Path(local) / "plans" / f"{name}.csv"))
    name = check_name(args.name) if args.name else study.name
    target = f"{storage.rstrip('/')}/{name}"
    if not args.resume:
        check_splits(study)  # split CSVs readable, image paths inside the image root
    if not args.address:
        check_local_gpus(study)  # --require-gpu: CUDA on this machine, before Ray starts
    if args.resume and not results_exist(target):
        raise CxrError(f"--resume: {target} does not exist; check --name and --storage")
    # One driver per sweep, taken before the checks below so that a second driver is refused whatever the first
    # is doing; released when this process ends, however it ends.
    lock = driver_lock.acquire(storage, name)
    if not args.resume and results_exist(target):
        lock.release()
        raise CxrError(f"{target} exists already; pass --resume to continue it, or pick another --name "
                       "(earlier results are never overwritten)")  # fmt: skip
    repaired = faults.repair_experiment_state(target) if args.resume else None  # cut short by a full disk?
    if repaired:
        print(repaired)
    from cxr_core.console import quiet_driver

    os.environ["CXR_VERBOSE"] = "1" if args.verbose else "0"  # trial processes read it
    log = quiet_driver(Path(storage) / name if "://" not in storage else Path("ray_results") / name,
                       verbose=args.verbose)  # fmt: skip
    if log is not None:
        print(f"[sweep] {name}: Ray's and the libraries' messages go to {log} (-v shows them here)")
    init_ray(address=args.address, num_cpus=args.num_cpus, dashboard=args.dashboard, timeout=timeout)
    if log is not None:
        quiet_driver(log.parent, verbose=False)  # again: ray.init sets its console handler up anew
    if args.address:
        try:
            probe_cluster_gpus(study, address=args.address)  # --require-gpu: CUDA on every GPU node
        except CxrError:
            stop_ray()
            lock.release()
            if log is not None and not args.resume and {p.name for p in log.parent.iterdir()} <= {log.name}:
                shutil.rmtree(log.parent, ignore_errors=True)  # a refused sweep leaves nothing behind
            raise
    storage_args = ["--storage", args.storage] if args.storage else []
    address_args = ["--address", args.address] if args.address else []
    resume_hint = shlex.join(
        ["python", "-m", "jobs.sweep", args.space, "--name", name, *storage_args, *address_args, "--resume"]
    )
    verbose = 2 if args.verbose else 0 if args.quiet else 1
    try:
        if args.resume:
            grid = resume_study(target, retry_errored=args.retry_errored, verbose=verbose)
        else:
            grid = run_study(study, name=name, storage=args.storage, verbose=verbose, mlflow=args.mlflow)
    except KeyboardInterrupt:
        stop_ray()  # Tune has saved the state; now no trial's log line can follow the hint
        lock.release()
        if faults.terminated():
            print(f"terminated (SIGTERM); continue with: {resume_hint}", file=sys.stderr)
            sys.exit(faults.SIGTERM_EXIT)
        print(f"interrupted; continue with: {resume_hint}", file=sys.stderr)
        sys.exit(130)
    lock.release()
    statuses = list(trial_statuses(grid).values())
    errors = statuses.count("ERROR")
    unfinished = len(statuses) - errors - statuses.count("TERMINATED")
    print(f"sweep finished: {len(grid)} trials, {errors} errored, {unfinished} unfinished; "
          f"results in {grid.experiment_path}")  # fmt: skip
    survived = fault_lines(grid)
    if survived:
        print(f"faults survived ({len(survived)}):", *survived, sep="\n  ")
    fallback = gpu_fallback_line(grid)  # given a GPU share, trained on the CPU
    if fallback:
        print(fallback)
    if unfinished:
        print(f"continue the unfinished trials with: {resume_hint}")
    if errors:
        print(f"retry the errored trials with: {resume_hint} --retry-errored")
    print(f"curves and hyperparameters: tensorboard --logdir {grid.experiment_path}")
    print(f"next: python -m jobs.analyze {grid.experiment_path}")


def dry_run(study, *, out: str) -> None:
    from cxr_core.plan import plan_table
    from cxr_core.tune_runner import resolved_trials

    table = plan_table(resolved_trials(study))
    from cxr_core.errors import CxrError
    from cxr_core.prepare import atomic_write_csv

    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(table, Path(out))
    except OSError as exc:
        raise CxrError(
            f"cannot write the plan to {out} ({exc.strerror or exc}); pass --plan-out a writable file"
        ) from None
    models = list(dict.fromkeys(table["model"]))
    # The model column only when the space has a model axis; one model is named once, at the end.
    shown = table.drop(columns=["arm"] if len(models) > 1 else ["arm", "model"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    per_model = ", ".join(f"{int((table['model'] == m).sum())} on {m}" for m in models)
    print(f"{len(table)} trials planned, nothing trained ({per_model}); plan written to {out}")


if __name__ == "__main__":
    main()
