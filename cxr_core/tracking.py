"""Experiment tracking around a sweep: TensorBoard (always) and MLflow (``--mlflow``), both through Ray Tune's
own logger callbacks, configured so that a trial reads the same there as in the report.

- TensorBoard: :func:`tensorboard_callback` is Tune's ``TBXLoggerCallback`` (per-trial event files in
  ``STORAGE/NAME/<trial>/``, every reported metric as a scalar per epoch) whose HParams view gets the trial's
  hyperparameters as short flat keys (:func:`flat_params`: ``method``, ``target_modules``, ``r``, ``alpha``,
  ``lr``, ``seed``, ...) against the final value of every metric and the best value of the study's metric.
  ``tensorboard --logdir STORAGE/NAME`` shows them.
- MLflow: :func:`mlflow_callback` makes a parent run for the sweep and Tune's ``MLflowLoggerCallback`` logs each
  trial as a child run (params flattened as ``results_frame`` names them, ``config/train/lr``, plus the flat
  keys; metrics per epoch); :func:`log_report` adds the report folder to the parent run as artifacts. The
  default store is local: ``sqlite:///STORAGE/NAME/mlflow.db`` with artifacts in ``STORAGE/NAME/mlartifacts``.
  Where the parent run lives is written to ``STORAGE/NAME/mlflow.json``, so ``jobs.analyze`` finds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cxr_core.errors import CxrError

MLFLOW_FILE = "mlflow.json"
# Sections and leaves of a trial's configuration that are plumbing, not hyperparameters.
_NOT_HPARAMS = {"data", "resources", "keep_checkpoints", "num_threads", "batch_size_eval"}


def _leaves(prefix: tuple[str, ...], node, out: list) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _leaves((*prefix, str(k)), v, out)
    else:
        out.append((prefix, node))


def flat_params(arm: dict) -> dict:
    """A trial's hyperparameters as short flat keys, defaults filled in: each leaf of its resolved configuration
    by its own name (``lr``, ``seed``, ``r``, ``alpha``, ``target_modules``), the arm's ``name`` as ``arm``; a
    name two sections share gets its section in front (``evaluation_batch_size``). Only the trial's own method
    section is kept; data paths, resources and unset values are left out; lists become comma-joined strings."""
    from cxr_core import methods
    from cxr_core.config import to_dict, trial_config

    try:
        resolved = to_dict(trial_config(arm))
    except Exception:  # noqa: BLE001 - a config the trial itself rejected: show what was given
        resolved = dict(arm)
    method = methods.find(resolved.get("method"))
    sections = {m.section for m in methods.registered()}
    own = method.section if method else None
    resolved = {k: v for k, v in resolved.items() if k not in _NOT_HPARAMS and (k not in sections or k == own)}
    if method is not None and isinstance(resolved.get(own), dict):
        # Defaults a method derives (LoRA's alpha = 2r) made explicit, as the report's labels show them.
        for _, long, value in method.shape(method.from_arm(arm)):
            resolved[own][long] = value
    leaves: list = []
    _leaves((), resolved, leaves)
    leaves = [(p, v) for p, v in leaves if p and p[-1] not in _NOT_HPARAMS and v is not None]
    counts: dict[str, int] = {}
    for p, _ in leaves:
        counts[p[-1]] = counts.get(p[-1], 0) + 1
    out = {}
    for p, v in leaves:
        bare = counts[p[-1]] == 1 or p[0] == "train"  # a shared name stays bare for the training section
        key = "arm" if p == ("name",) else p[-1] if bare else "_".join(p[-2:])
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        out[key] = v
    return out


def results_params(arm: dict) -> dict:
    """The arm flattened exactly as :func:`cxr_core.tune_runner.results_frame` names its columns."""
    leaves: list = []
    _leaves(("config",), arm, leaves)
    return {"/".join(p): ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for p, v in leaves}


def tensorboard_callback(metric: str, mode: str):
    """Tune's TensorBoard logger with the study's flat hyperparameters and final/best metrics in HParams."""
    from ray.tune.logger import TBXLoggerCallback

    class StudyTBXLogger(TBXLoggerCallback):
        def __init__(self):
            super().__init__()
            self._best: dict = {}

        def log_trial_result(self, iteration: int, trial, result: dict):
            value = result.get(metric)
            if isinstance(value, (int, float)) and not math.isnan(value):
                old = self._best.get(trial)
                better = old is None or (value > old if mode == "max" else value < old)
                self._best[trial] = value if better else old
            super().log_trial_result(iteration, trial, result)

        def _try_log_hparams(self, trial, result: dict):
            from tensorboardX.summary import hparams

            params = {k: v for k, v in flat_params(trial.config.get("arm", {})).items() if v is not None}
            params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
            prefix = "ray/tune/"
            metrics = {f"final/{k[len(prefix) :]}": v for k, v in result.items() if k.startswith(prefix)}
            if trial in self._best:
                metrics[f"best/{metric}"] = self._best.pop(trial)
            writer = self._trial_writer[trial].file_writer
            for summary in hparams(hparam_dict=params, metric_dict=metrics):
                writer.add_summary(summary)

    return StudyTBXLogger()


def default_mlflow_uri(results: Path) -> str:
    """The local store: an SQLite file in the sweep's results folder."""
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def mlflow_callback(uri: str | None, *, results: Path, name: str, metric: str):
    """A parent run for the sweep, and the callback that logs each trial as its child run.

    Args:
        uri: an MLflow tracking URI (a server, ``sqlite:///...``, ...); None = :func:`default_mlflow_uri`.
        results: the sweep's local results folder (``STORAGE/NAME``); created if missing.
        name: the sweep's name (the MLflow experiment and parent run are named after it).
        metric: the study's metric (tagged on the parent run).

    Raises:
        CxrError: MLflow is not installed, or the store cannot be reached.
    """
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError as exc:
        raise CxrError(
            f"--mlflow needs MLflow ({exc}); install it with `pip install -e '.[mlflow]'`, or drop --mlflow"
        ) from exc
    from cxr_core.console import quiet_library

    quiet_library("mlflow")  # "Creating initial MLflow database tables..." goes to driver.log
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    uri = uri or default_mlflow_uri(results)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
            artifacts = (results / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        parent = client.create_run(experiment_id, run_name=name, tags={"study_metric": metric, "kind": "sweep"})
    except mlflow.exceptions.MlflowException as exc:
        raise CxrError(f"--mlflow: cannot use the tracking store {uri} ({exc}); check the URI") from exc
    (results / MLFLOW_FILE).write_text(
        json.dumps({"uri": uri, "experiment": name, "parent_run_id": parent.info.run_id}, indent=1) + "\n"
    )

    class StudyMLflowLogger(MLflowLoggerCallback):
        """Tune's MLflow logger: one child run per trial, named like the trial's folder, flat params."""

        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial)}
                run = self.mlflow_util.start_run(tags=tags, run_name=Path(trial.local_path or str(trial)).name)
                self._trial_runs[trial] = run.info.run_id
            arm = trial.config.get("arm", {})
            params = {**results_params(arm), **flat_params(arm)}
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

    return StudyMLflowLogger(
        tracking_uri=uri,
        experiment_name=name,
        tags={"mlflow.parentRunId": parent.info.run_id},
        save_artifact=False,
    )


def log_report(results: Path, report: Path) -> str | None:
    """Add ``report`` to the sweep's parent MLflow run as artifacts, if the sweep ran with ``--mlflow``.
    Returns the parent run's id, or None when the sweep was not tracked."""
    marker = Path(results) / MLFLOW_FILE
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=info["uri"])
    client.log_artifacts(info["parent_run_id"], str(report), artifact_path="report")
    client.set_terminated(info["parent_run_id"])
    return info["parent_run_id"]
