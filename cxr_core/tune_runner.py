"""Orchestration: the only module that imports Ray. A validated :class:`Study` -> a Ray Tune run.

The param space holds one grid over the arms (each arm repeated ``num_samples`` times); Tune resolves the
distributions nested inside each arm, so each method gets its own ranges. Resources are per arm.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
import time
from pathlib import Path

from cxr_core.config import REQUIRE_GPU_FIX
from cxr_core.errors import CxrError, lookup
from cxr_core.records import RECORDS_DIR
from cxr_core.space import DISTRIBUTIONS, Dist, Study, build_scheduler, study_models


def _to_tune(node):
    from ray import tune

    if isinstance(node, Dist):
        return lookup(DISTRIBUTIONS, node.kind, "distribution").tune(tune, node.args)
    if isinstance(node, dict):
        return {k: _to_tune(v) for k, v in node.items()}
    return node


def _suggest(trial, name: str, dist: Dist):
    return lookup(DISTRIBUTIONS, dist.kind, "distribution").optuna(trial, name, dist.args)


def _resolve_with(spec, trial, prefix: str):
    if isinstance(spec, Dist):
        return _suggest(trial, prefix, spec)
    if isinstance(spec, dict):
        return {k: _resolve_with(v, trial, f"{prefix}/{k}") for k, v in spec.items()}
    return spec


class _DefineByRun:
    """Optuna's define-by-run space (a class, not a closure, so Tune can pickle the searcher's state)."""

    def __init__(self, arms: dict):
        self.arms = arms

    def __call__(self, trial):
        name = trial.suggest_categorical("arm_name", list(self.arms))
        return {"arm": _resolve_with(self.arms[name], trial, name)}


def optuna_searcher(study: Study):
    """Optuna (TPE) over a conditional space: the arm first, then that arm's own distributions
    (grid_search counts as a categorical). The resolved arm comes back as the constant ``arm``."""
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:  # pragma: no cover - depends on the optional extra
        raise CxrError("search.algorithm optuna needs the optuna extra: pip install -e '.[optuna]'") from None
    try:
        import optuna
    except ImportError:
        raise CxrError("search.algorithm optuna needs the optuna extra: pip install -e '.[optuna]'") from None
    sampler = optuna.samplers.TPESampler(seed=study.search.get("seed", 0))
    define_by_run = _DefineByRun({arm.name: arm.spec for arm in study.arms})
    return OptunaSearch(space=define_by_run, metric=study.metric, mode=study.mode, sampler=sampler)


def param_space(study: Study) -> dict:
    """``{"arm": grid_search([arm spec, ...])}`` with Tune distributions inside each arm."""
    from ray import tune

    variants = [_to_tune(arm.spec) for arm in study.arms for _ in range(arm.num_samples)]
    return {"arm": tune.grid_search(variants)}


def resolved_trials(study: Study, *, seed: int = 0) -> list[dict]:
    """Every trial's config, resolved by Tune's own variant generator (grids expanded, ranges sampled with
    ``seed``), in the order Tune would create them. Used by ``--dry-run``; no Ray instance is started."""
    import random

    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    random.seed(seed)
    np.random.seed(seed)
    return [spec["arm"] for _, spec in generate_variants(param_space(study))]


def trainable(config: dict) -> None:
    """The Tune function trainable: one trial of :func:`cxr_core.trial.run_trial`."""
    import ray
    from ray import tune

    from cxr_core import checkpoint_check, faults
    from cxr_core.trial import run_trial

    if os.environ.get("CXR_VERBOSE", "0") != "1":
        from cxr_core.console import quiet_worker

        quiet_worker()
    # Where the trial runs and what Ray gave it: the node, the accelerator ids Ray assigned (its GPU share's
    # device, e.g. "0"; "" without a GPU share) and CUDA_VISIBLE_DEVICES as Ray set it, and when it started (unix
    # seconds; each report adds reported_at, so the last one is when it ended).
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "accelerator_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "started_at": time.time(),
    }
    # The newest intact checkpoint: a damaged one (cut short by a kill or a full disk) is skipped, and said so.
    resume, recovery = checkpoint_check.resume_folder(tune.get_checkpoint())
    notes = {checkpoint_check.RECOVERY_KEY: recovery} if recovery else {}

    def report(metrics: dict, folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        with faults.naming_full_disk(_trial_storage_path()):  # Tune uploads the checkpoint in here
            tune.report({**metrics, **placement, "reported_at": time.time(), **notes}, checkpoint=checkpoint)
        notes.clear()  # said once, with the first epoch after the resume

    # Per-image validation records go to the trial's folder; Tune uploads it to the storage with every
    # checkpoint (SyncConfig(sync_artifacts=True) in run_study), so they sit beside result.json.
    records = Path(tune.get_context().get_trial_dir()) / RECORDS_DIR
    run_trial(config["arm"], report=report, resume_from=resume, records_dir=records,
              name=tune.get_context().get_trial_name())  # fmt: skip


def _gpu_arms(study: Study) -> list[tuple[str, float]]:
    """(arm name, its largest GPU share) of every arm that asks for a GPU with ``resources.require_gpu``."""
    from cxr_core.config import trial_config
    from cxr_core.space import corner_configs

    out = []
    for arm in study.arms:
        configs = [trial_config(c) for c in corner_configs(arm)]
        shares = [c.resources.gpu for c in configs if c.resources.require_gpu and c.resources.gpu > 0]
        if shares:
            out.append((arm.name, max(shares)))
    return out


def _torch_text() -> str:
    import torch

    return f"torch {torch.__version__}: " + (
        "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device visible"
    )


def check_local_gpus(study: Study) -> None:
    """``--require-gpu`` on a local Ray instance: an arm given a GPU share needs CUDA on this machine. Called
    before Ray starts; nothing is trained.

    Raises:
        CxrError: an arm with ``resources.gpu`` > 0 and ``resources.require_gpu``, and no CUDA here.
    """
    arms = _gpu_arms(study)
    if not arms:
        return
    import torch

    if torch.cuda.is_available():
        return
    named = ", ".join(f"arm {name} (resources.gpu = {gpu:g})" for name, gpu in arms)
    raise CxrError(f"{named}: GPU required (--require-gpu) but CUDA is unavailable on this machine "
                   f"({_torch_text()}); {REQUIRE_GPU_FIX} (in {study.path})")  # fmt: skip


def _cuda_probe() -> dict:
    """Run on a node with a GPU share, as a trial would be: what torch sees there."""
    import ray
    import torch

    return {
        "cuda": torch.cuda.is_available(),
        "devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": _torch_text(),
        "ip": ray.util.get_node_ip_address(),
        "ids": [str(i) for i in ray.get_gpu_ids()],
    }


def probe_cluster_gpus(study: Study, *, address: str, timeout: float = 120.0) -> None:
    """``--require-gpu`` on a cluster: before any trial starts, every live node that declares GPUs runs a task
    with a small GPU share (so Ray sets CUDA_VISIBLE_DEVICES as for a trial) that asks torch whether it sees
    CUDA there. Needs Ray initialised (:func:`init_ray`).

    Raises:
        CxrError: no node declares a GPU, a node's torch sees no CUDA, or the nodes did not answer in time.
    """
    arms = _gpu_arms(study)
    if not arms:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    named = ", ".join(f"arm {name} (resources.gpu = {gpu:g})" for name, gpu in arms)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        raise CxrError(f"{named}: GPU required (--require-gpu) but no node of the cluster at {address} declares a "
                       "GPU (`ray status` on the head lists the nodes' resources); start the worker nodes on GPU "
                       "machines (or with `ray start --num-gpus N`), or drop --require-gpu "
                       f"(in {study.path})")  # fmt: skip
    probe = ray.remote(num_cpus=0, num_gpus=0.0001, max_retries=0)(_cuda_probe)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    try:
        seen = ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise CxrError(f"--require-gpu: the GPU nodes of the cluster at {address} did not say within {timeout:g} s "
                       "whether torch sees CUDA there (a node busy or starting); check `ray status` on the head "
                       "and try again, or drop --require-gpu") from None  # fmt: skip
    bad = [s for s in seen if not s["cuda"]]
    if bad:
        where = ", ".join(f"node {s['ip']} (GPU ids {','.join(s['ids']) or 'none'}; {s['torch']})" for s in bad)
        raise CxrError(f"{named}: GPU required (--require-gpu) but CUDA is unavailable on {len(bad)} of the "
                       f"cluster's {len(seen)} GPU node(s): {where}; {REQUIRE_GPU_FIX} (in {study.path})")  # fmt: skip


def gpu_fallback_line(grid) -> str | None:
    """One line naming the trials that were given a GPU share but trained on the CPU (no CUDA where they ran,
    reported as ``gpu_fallback``), per arm and share; None when there are none. For the sweep's last lines and
    the report's summary."""
    by_arm: dict[tuple[str, float], list[str]] = {}
    for result in grid:
        metrics = result.metrics or {}
        if not metrics.get("gpu_fallback"):
            continue
        arm = (result.config or {}).get("arm", {})
        gpu = float((arm.get("resources") or {}).get("gpu", 0))
        trial = Path(result.path).name if result.path else str(metrics.get("trial_id", "?"))
        by_arm.setdefault((str(arm.get("name", "?")), gpu), []).append(trial)
    if not by_arm:
        return None
    parts = [
        f"arm {arm} ran on CPU although resources.gpu = {gpu:g} ({len(trials)} trial{'s' * (len(trials) > 1)}: "
        f"{', '.join(sorted(trials))})"
        for (arm, gpu), trials in sorted(by_arm.items())
    ]
    return ("; ".join(parts) + ": CUDA was unavailable where they ran, so their cost columns (peak memory, "
            "samples/s, wall time) are CPU figures; --require-gpu refuses such a sweep before it trains")  # fmt: skip


def _trial_storage_path() -> str:
    """Where Tune stores this trial's results and checkpoints (on the storage; a local path or a bucket path)."""
    from ray import tune

    try:
        return tune.get_context().get_storage().trial_fs_path
    except (AttributeError, RuntimeError):  # pragma: no cover - a Tune without the storage context
        return tune.get_context().get_trial_dir()


def _resources(config: dict) -> dict:
    res = config["arm"].get("resources") or {}
    return {"cpu": float(res.get("cpu", 1)), "gpu": float(res.get("gpu", 0))}


def _trial_name(trial, with_model: bool = False) -> str:
    """A trial's one name (console, folder, TensorBoard, MLflow, report): its configuration and seed, then Tune's
    id, ``lora-text-r16-a32-lr0.005-s0_c1f95_00012`` (:func:`cxr_core.console.trial_name`); ``with_model`` (a
    study with more than one model) puts the model first, ``embedded-small-lora-text-...``."""
    from cxr_core.console import trial_name

    return f"{trial_name(trial.config.get('arm', {}), with_model=with_model)}_{trial.trial_id}"


def init_ray(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    timeout: float | None = None,
) -> None:
    """Start a local Ray instance, or connect to a cluster (``auto`` or ``HOST:PORT``).

    Joining a cluster is bounded by ``timeout`` seconds (default :func:`cxr_core.faults.connect_timeout`; the
    cluster has been probed before, see :func:`cxr_core.faults.probe_cluster`), and a refusal is one line.

    Raises:
        CxrError: the cluster refused the connection.
    """
    import ray

    from cxr_core import faults

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Trial processes inherit these: no per-trial download/loading progress bars in the sweep's output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kwargs: dict = {"include_dashboard": dashboard, "log_to_driver": True}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # never on a public interface: it can submit jobs
        try:
            from ray._private.utils import get_dashboard_dependency_error

            missing = get_dashboard_dependency_error()
        except ImportError:  # pragma: no cover - a Ray without the helper: let ray.init decide
            missing = None
        if missing is not None and not address:
            raise CxrError(
                f"--dashboard needs the Ray dashboard's packages ({missing}); install them with "
                "`pip install 'ray[default]'`, or drop --dashboard"
            )
    if address:
        seconds = faults.connect_timeout(timeout)
        watchdog = faults.watchdog(seconds, f"joining the Ray cluster at {address} did not finish within "
                                   f"{seconds:g} s; check that the head and its nodes are healthy (`ray status` "
                                   "on the head), or wait longer with --connect-timeout SECONDS")  # fmt: skip
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise CxrError(
                f"cannot join the Ray cluster at {address} ({type(exc).__name__}: {text}); check --address and "
                f"that the driver's Ray version and RAY_AUTH_MODE match the cluster's ({faults.CLUSTER_DOCS})"
            ) from None
        finally:
            watchdog.cancel()
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)  # a new instance, even if a cluster runs here
    faults.sigterm_as_interrupt()  # again: ray.init installs SIGTERM handlers of its own


def stop_ray() -> None:
    """Shut Ray down in this process (so that no worker's log line comes after the driver's last words)."""
    import ray

    ray.shutdown()


def run_study(
    study: Study,
    *,
    name: str | None = None,
    storage: str | None = None,
    verbose: int = 1,
    mlflow: str | None = None,
):
    """Run every trial of ``study``; results go to ``{storage}/{name}`` (default ``ray_results/NAME``).

    ``verbose``: 0 prints nothing while it runs, 1 the sweep's live table (:mod:`cxr_core.console`), 2 Ray Tune's
    own output in full.

    Every trial writes TensorBoard event files with flat hyperparameters (:mod:`cxr_core.tracking`); with
    ``mlflow`` (a tracking URI, or ``""`` for the local store in the results folder) each trial is also an
    MLflow run.

    Returns:
        Tune's ResultGrid.
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback

    from cxr_core.tracking import mlflow_callback, tensorboard_callback
    from cxr_core.tune_logger import KeepNewestJsonLogger

    storage = storage or str(Path("ray_results").resolve())
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    name = name or study.name
    # A study over several models names each trial's model (a partial, not a closure: Tune pickles it).
    namer = functools.partial(_trial_name, with_model=len(study_models(study)) > 1)
    keep = max(int(arm.spec.get("keep_checkpoints", 1) or 1) for arm in study.arms)
    optuna = study.search.get("algorithm") == "optuna"
    # Tune's JSON logger drops results when it restarts a failed trial: KeepNewestJsonLogger does not.
    callbacks = [KeepNewestJsonLogger(), CSVLoggerCallback(), tensorboard_callback(study.metric, study.mode)]
    if mlflow is not None:
        if "://" in storage:
            raise CxrError("--mlflow keeps its local store in the results folder: use a local --storage, or pass "
                           "--mlflow URI of a tracking server")  # fmt: skip
        local = Path(storage) / name
        callbacks.append(mlflow_callback(mlflow or None, results=local, name=name, metric=study.metric))
    reporter = None
    if verbose < 2:  # Tune's classic reporter, subclassed: the sweep's own table instead of Tune's dumps
        from cxr_core.console import progress_reporter

        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        reporter = progress_reporter(study.metric, study.mode) if verbose == 1 else None
    tuner = tune.Tuner(
        tune.with_resources(trainable, _resources),
        param_space={} if optuna else param_space(study),
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode=study.mode,
            search_alg=optuna_searcher(study) if optuna else None,
            num_samples=sum(arm.num_samples for arm in study.arms) if optuna else 1,
            scheduler=build_scheduler(study.scheduler),
            max_concurrent_trials=study.max_concurrent_trials or None,
            trial_dirname_creator=namer,
            trial_name_creator=namer,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=study.stop or None,
            verbose=min(verbose, 1) if verbose < 2 else 2,
            progress_reporter=reporter,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=True),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=keep, checkpoint_score_attribute=study.metric, checkpoint_score_order=study.mode
            ),
        ),
    )
    return _fit(tuner, storage)


def _fit(tuner, storage: str):
    """``tuner.fit()``, with a Ctrl-C turned back into :class:`KeyboardInterrupt` once Tune has saved its state.

    Tune catches the first SIGINT itself, stops the trials, saves the experiment and returns normally; its
    handler then puts back the one it replaced, which is how the interruption is seen here. When the sweep's
    ``storage`` filled up, Tune's own bookkeeping fails too (an empty error file it cannot read back): that
    ends in one line saying so.

    Raises:
        CxrError: the storage is full.
    """
    from cxr_core import faults

    watching = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    before = signal.getsignal(signal.SIGINT) if watching else None
    try:
        grid = tuner.fit()
    except Exception:
        if not faults.nearly_full(storage):
            raise
        raise CxrError(
            f"storage {storage} is full ({faults.free_space_text(storage)}): the sweep stopped with the state it "
            "saved last, earlier checkpoints intact; free space there, then continue with the same command plus "
            "--resume --retry-errored"
        ) from None
    if watching and signal.getsignal(signal.SIGINT) is before:
        raise KeyboardInterrupt("the sweep was interrupted; its state is saved")
    return grid


def storage_filesystem(uri: str):
    """The (pyarrow filesystem, path) of a storage URI, as Ray Tune resolves it (Tune stores through pyarrow).

    Raises:
        CxrError: no filesystem for the URI's scheme is installed, or the storage cannot be reached.
    """
    import pyarrow.fs

    scheme = uri.split("://", 1)[0]
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, NotImplementedError, ImportError, OSError) as exc:  # ArrowInvalid is a ValueError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and not any(w in text for w in ("libjvm", "libhdfs", "JAVA_HOME")):
            raise CxrError(
                f"storage {uri} cannot be reached ({text}); check the bucket name, the credentials and the "
                "network, or use a local or NFS path"
            ) from None
        raise CxrError(
            f"storage {uri}: no filesystem for {scheme}:// is installed ({text}); Ray Tune stores results "
            "through pyarrow, which handles s3://, gs://, hdfs:// (with Java) and file://: use one of those or "
            "a local or NFS path"
        ) from None


def results_exist(target: str) -> bool:
    """Whether ``target`` (a local folder or a storage URI) exists; a URI is checked through pyarrow.

    Raises:
        CxrError: the URI's scheme has no filesystem installed, or the storage cannot be reached.
    """
    if "://" not in target:
        return Path(target).exists()
    import pyarrow.fs

    fs, fs_path = storage_filesystem(target)
    try:
        return fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound
    except OSError as exc:
        raise CxrError(
            f"storage {target} cannot be reached ({exc}); check the credentials and network"
        ) from None


def _uri_listing(path: str, fix: str) -> list[str]:
    import pyarrow.fs

    fs, fs_path = storage_filesystem(path)
    if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
        raise CxrError(f"results folder {path} does not exist; {fix}")
    return [Path(i.path).name for i in fs.get_file_info(pyarrow.fs.FileSelector(fs_path))]


def experiment_folder(path: str, *, fix: str = "pass the folder of a sweep, STORAGE/NAME") -> str:
    """Check that ``path`` (a local folder or a storage URI) holds a Tune experiment; returns what to restore.

    Raises:
        CxrError: the folder does not exist, is empty or is not a sweep's, or the sweep has started but saved
            no state yet.
    """
    try:
        if "://" in path:
            from cxr_core import faults

            names = faults.bounded(
                lambda: _uri_listing(path, fix),
                seconds=faults.connect_timeout(),
                what=f"storage {path}",
                fix="check the bucket name, the credentials and the network, or wait longer with "
                f"${faults.TIMEOUT_ENV}=SECONDS",
            )  # a cloud storage without network: pyarrow would retry for many minutes
        else:
            p = Path(path)
            if not p.is_dir():
                raise CxrError(f"results folder {path} does not exist; {fix}")
            names = [c.name for c in p.iterdir()]
            path = str(p.resolve())
    except OSError as exc:
        raise CxrError(f"cannot list results folder {path} ({exc}); check the path and permissions") from None
    if not any(n.startswith("experiment_state-") and n.endswith(".json") for n in names):
        if "tuner.pkl" in names:
            raise CxrError(
                f"{path}: the sweep has started but saved no experiment state yet; wait a few seconds and run "
                "the command again"
            )
        raise CxrError(f"{path} holds no Tune experiment (no experiment_state-*.json); {fix}")
    if "tuner.pkl" not in names:
        raise CxrError(
            f"{path} has an experiment state but no tuner.pkl: it is not a complete sweep folder; {fix}"
        )
    return path


def resume_study(path: str, *, retry_errored: bool = False, verbose: int = 1):
    """Continue an interrupted sweep from its folder with ``Tuner.restore``: finished trials are kept and not
    rerun, unfinished ones continue from their last checkpoint, errored ones restart from their last
    checkpoint only with ``retry_errored``.

    Returns:
        Tune's ResultGrid of the whole sweep.
    """
    from ray import tune

    path = experiment_folder(path, fix="check --name and --storage")
    tuner = tune.Tuner.restore(
        path,
        trainable=tune.with_resources(trainable, _resources),
        resume_unfinished=True,
        resume_errored=retry_errored,
        restart_errored=False,
    )
    return _fit(tuner, path)


def load_results(path: str | Path):
    """Tune's ResultGrid of a finished (or partial) experiment folder.

    Raises:
        CxrError: the folder does not exist or holds no Tune experiment.
    """
    from ray import tune

    path = experiment_folder(str(path), fix="pass ray_results/NAME of a sweep")
    for attempt in range(3):
        try:
            return tune.Tuner.restore(path, trainable=tune.with_resources(trainable, _resources)).get_results()
        except RuntimeError:  # Tune could not read experiment_state-*.json (mid-write, or damaged)
            if attempt == 2:
                raise CxrError(
                    f"{path}: Tune cannot read the sweep's experiment_state-*.json: the sweep is writing it "
                    "right now (run the command again in a few seconds) or the file is damaged"
                ) from None
            time.sleep(1.0)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:  # tuner.pkl unreadable
            raise CxrError(
                f"{path}: Tune cannot read the sweep's tuner.pkl ({type(exc).__name__}: {exc}); the folder is "
                "damaged or still being created"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


DEFAULT_OBJECTIVE = ("label_f1_micro", "max")


def resolve_objective(grid, metric: str | None = None, mode: str | None = None) -> tuple[str, str, str]:
    """The metric and mode that pick each trial's best epoch and each method's best configuration.

    ``grid`` is the sweep's ResultGrid (:func:`load_results`). The sweep's own ``metric``/``mode`` (its search
    space's, kept by Tune in the experiment folder) unless
    ``metric`` is given; a given metric without ``mode`` takes the sweep's mode when it is the sweep's metric,
    else ``min`` for a loss and ``max`` otherwise.

    Returns:
        ``(metric, mode, source)``: source says where the metric came from, for the summary.
    """
    analysis = getattr(grid, "_experiment_analysis", None)
    own_metric, own_mode = getattr(analysis, "default_metric", None), getattr(analysis, "default_mode", None)
    if metric is None:
        if own_metric:
            return own_metric, mode or own_mode or DEFAULT_OBJECTIVE[1], "the sweep's own metric"
        return DEFAULT_OBJECTIVE[0], mode or DEFAULT_OBJECTIVE[1], "the default metric: the sweep recorded none"
    if mode is None:
        mode = own_mode if metric == own_metric and own_mode else ("min" if "loss" in metric else "max")
    return metric, mode, "chosen with --metric" + (f", the sweep's own is {own_metric}" if own_metric else "")


def trial_statuses(grid) -> dict[str, str]:
    """{trial folder name: TERMINATED | RUNNING | PENDING | PAUSED | ERROR} for a ResultGrid.

    The status lives on the Trial objects behind the grid (not on ``Result``), hence the private access.
    """
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return {Path(t.path).name: t.status for t in trials if getattr(t, "path", None)}


def trial_faults(grid) -> list[dict]:
    """The faults each trial survived: ``[{trial, failures, recoveries}]`` for every trial that Tune retried
    after a failure (``failures``: how many times; ``max_failures`` in the search space) or that skipped a
    damaged checkpoint at a resume (``recoveries``: the notes of :mod:`cxr_core.checkpoint_check`).
    """
    from cxr_core.checkpoint_check import RECOVERY_KEY

    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    failures = {
        Path(t.path).name: int(getattr(t, "num_failures", 0) or 0) for t in trials if getattr(t, "path", None)
    }
    notes: dict[str, list[str]] = {}
    for result in grid:
        history = result.metrics_dataframe
        if result.path and history is not None and RECOVERY_KEY in history:
            notes[Path(result.path).name] = [str(n) for n in history[RECOVERY_KEY].dropna() if str(n)]
    names = sorted(set(failures) | set(notes))
    return [
        {"trial": n, "failures": failures.get(n, 0), "recoveries": notes.get(n, [])}
        for n in names
        if failures.get(n, 0) or notes.get(n)
    ]


def fault_lines(grid) -> list[str]:
    """One line per fault survived (:func:`trial_faults`), for the sweep's last words and the report."""
    lines = []
    for f in trial_faults(grid):
        if f["failures"]:
            times = "once" if f["failures"] == 1 else f"{f['failures']} times"
            lines.append(f"{f['trial']}: failed {times} and was retried from its last checkpoint")
        lines += [f"{f['trial']}: {note}" for note in f["recoveries"]]
    return lines


def _flatten(prefix: str, node, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(node, (list, tuple)):
        out[prefix] = ",".join(map(str, node))
    else:
        out[prefix] = node


def results_frame(path: str | Path, *, grid=None):
    """The tidy results of a sweep: one row per trial and epoch, the arm's config flattened into
    ``config/...`` columns, plus ``trial_id``, ``status`` and ``error`` (errored trials keep a row even when
    they reported nothing). Works on a sweep still running or one with errored trials. ``grid``: the sweep's
    ResultGrid if the caller has already restored it (:func:`load_results`), so it is read once.

    Returns:
        A pandas DataFrame.
    """
    import pandas as pd

    grid = load_results(path) if grid is None else grid
    status_of = trial_statuses(grid)
    # A trial that has not reported yet (a sweep still running) has no config on its Result: take its Trial's.
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    config_of = {Path(t.path).name: t.config for t in trials if getattr(t, "path", None)}
    rows = []
    for result in grid:
        folder = Path(result.path).name if result.path else ""
        config: dict = {}
        _flatten("config", (result.config or config_of.get(folder) or {}).get("arm", {}), config)
        trial_id = result.metrics.get("trial_id") or folder
        error = None
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:300]
        history = result.metrics_dataframe
        status = "ERROR" if error else status_of.get(folder, "UNKNOWN")
        base = {"trial_id": trial_id, "trial_path": result.path, "status": status, "error": error, **config}
        if history is None or history.empty:
            rows.append(base)
            continue
        if (
            "epoch" in history
        ):  # a resume past a damaged checkpoint reports epochs again: the later report stands
            history = history.drop_duplicates("epoch", keep="last")
        for rec in history.to_dict("records"):
            rows.append({**base, **{k: v for k, v in rec.items() if not k.startswith("config/")}})
    return pd.DataFrame(rows)


def best_checkpoints(
    path: str | Path,
    *,
    metric: str,
    mode: str,
    group_by: str = "method",
    grid=None,
    config_id: str | None = None,
) -> list[dict]:
    """For each group (``method``, or ``variant`` = method + LoRA preset), the best configuration by its
    mean over seeds of the best validation ``metric`` (see :mod:`cxr_core.analysis`), and for every seed of
    it, that trial's best checkpoint: everything is chosen on validation only. With ``config_id`` (an id of
    :func:`cxr_core.analysis.configs_table`), that configuration instead of each group's best.

    Returns:
        ``[{group, config_id, trial_id, seed, config (the arm dict), checkpoint_path, val_<metric>}]``.

    Raises:
        CxrError: ``config_id`` names no configuration of the sweep.
    """
    from cxr_core import analysis

    grid = load_results(path) if grid is None else grid
    epochs = results_frame(path, grid=grid)
    if epochs.empty or metric not in epochs:
        unfinished = sorted(set(epochs.get("status", [])) - {"TERMINATED", "ERROR"})
        if unfinished:
            raise CxrError(
                f"{path}: no trial has reported {metric!r} yet and trials are {', '.join(unfinished)}: the sweep "
                "is still running or was interrupted; wait for a first epoch (or resume it), then evaluate"
            )
        return []
    best = analysis.chosen_configs(epochs, metric=metric, mode=mode, group_by=group_by, config_id=config_id,
                                   where=str(path))  # fmt: skip
    by_trial = {str(r.metrics.get("trial_id")): r for r in grid if r.metrics}
    picks = []
    for _, cfg in best.iterrows():
        for trial_id in str(cfg["trial_ids"]).split(","):
            result = by_trial.get(trial_id)
            if result is None or result.error is not None:
                continue
            try:
                checkpoint = result.get_best_checkpoint(metric, mode)
            except (RuntimeError, ValueError):
                checkpoint = None
            if checkpoint is None:
                continue
            history = result.metrics_dataframe[metric].dropna()
            arm = result.config["arm"]
            picks.append(
                {
                    "group": cfg["group"],
                    "config_id": cfg["config_id"],
                    "trial_id": trial_id,
                    "seed": arm.get("train", {}).get("seed", 0),
                    "config": arm,
                    "checkpoint_path": checkpoint.path,
                    f"val_{metric}": float(history.max() if mode == "max" else history.min()),
                }
            )
    return picks
