"""What a sweep prints: a calm live table, one name per trial, and everything else in a log file.

- :func:`trial_name`: the one name of a trial, everywhere (console, folder, TensorBoard, MLflow, report): the
  readable configuration plus its seed, ``lora-text-r16-a32-lr0.005-s0``; Tune's id is kept beside it. When the
  space has more than one model (a ``grid_search`` over ``model``), the model comes first:
  ``embedded-small-lora-text-r16-a32-lr0.005-s0``.
- :class:`SweepReporter` (built by :func:`progress_reporter`): Tune's reporter, subclassed to print one short row
  per trial, flat columns (arm, model when there are several, method, preset, shape settings, lr, seed | status,
  epoch, val_loss, the study's metric and its best so far) and one progress line (done / running / pending /
  errored, elapsed, ETA), at most every ``every`` seconds and when the sweep ends; it fits 120 columns.
- :func:`quiet_driver` / :func:`quiet_worker`: library warnings and Ray's info lines go to
  ``STORAGE/NAME/driver.log`` (the driver) or stay in Ray's worker logs (the trials), not the console; what
  matters to the user (an error, a skipped image, a failed trial with its error file) still reaches it.
  ``-v`` keeps the console as verbose as Ray and the libraries make it.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from pathlib import Path

from cxr_core.tracking import flat_params

DRIVER_LOG = "driver.log"
_SAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def model_label(name) -> str:
    """A model as a trial name shows it: ``embedded``, ``embedded-small``, ``git-base`` (a hub id's or a folder's
    last part), ``arch_git-large`` (``arch:git-large``, made safe)."""
    text = str(name).rstrip("/")
    return _SAFE.sub("_", text.rsplit("/", 1)[-1] or text)


def name_parts(arm: dict, *, with_model: bool = False) -> list[tuple[str, str]]:
    """The settings that tell a trial apart, as (column, value): the model (``with_model``: the space has more
    than one), method, its variant (preset), its shape settings (rank, alpha, ...), lr, seed."""
    from cxr_core import methods

    flat = flat_params(arm)
    method = methods.find(flat.get("method")) or methods.reference()
    settings = method.from_arm(arm)
    parts = [("model", model_label(flat.get("model", "embedded")))] if with_model else []
    parts += [("method", method.name)]
    variant = method.variant_value(settings)
    if variant is not None:
        parts.append(("preset", variant))
    parts += [(long, _fmt(value)) for _, long, value in method.shape(settings)]
    parts += [("lr", _fmt(flat.get("lr"))), ("seed", _fmt(flat.get("seed")))]
    return parts


def trial_name(arm: dict, *, with_model: bool = False) -> str:
    """``lora-text-r16-a32-lr0.005-s0``: the configuration and seed, safe as a folder name; ``with_model`` (a space
    with more than one model) puts the model first, ``embedded-small-lora-text-r16-a32-lr0.005-s0``."""
    from cxr_core import methods

    parts = dict(name_parts(arm, with_model=with_model))
    method = methods.find(parts["method"]) or methods.reference()
    pieces = [parts["model"]] if with_model else []
    pieces += [parts["method"]] + ([parts["preset"]] if "preset" in parts else [])
    pieces += [f"{short}{_fmt(value)}" for short, _, value in method.shape(method.from_arm(arm))]
    pieces += [f"lr{parts['lr']}", f"s{parts['seed']}"]
    return _SAFE.sub("_", "-".join(pieces))[:100]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_reporter(metric: str, mode: str, *, every: float = 30.0, table_every: float = 600.0):
    """Tune's CLIReporter, subclassed to print the sweep's own view (see the module docstring): the progress line
    at most every ``every`` seconds when it changed, the whole table at the start, at most every ``table_every``
    seconds, and at the end."""
    from ray.tune import CLIReporter

    class SweepReporter(CLIReporter):
        def __init__(self):
            super().__init__(max_report_frequency=every)
            self._began = time.time()
            self._best: dict[str, float] = {}
            self._last_line = ""
            self._last_table = -math.inf

        def report(self, trials, done: bool, *sys_info: str):
            text = render_table(trials, metric=metric, mode=mode, began=self._began, best=self._best)
            line = text.split("\n", 1)[0]
            now = time.time()
            if done or now - self._last_table >= table_every:
                print(text, flush=True)
                self._last_table = now
            elif line.split(" | ")[0] != self._last_line.split(" | ")[0]:  # counts changed
                print(line, flush=True)
            self._last_line = line

    return SweepReporter()


def render_table(trials, *, metric: str, mode: str, began: float, best: dict) -> str:
    """The live view: one progress line, then one row per trial (see :func:`progress_reporter`)."""
    counts = {"TERMINATED": 0, "RUNNING": 0, "PENDING": 0, "ERROR": 0, "PAUSED": 0}
    rows, columns = [], ["arm"]
    durations = []
    models = {model_label(flat_params(t.config.get("arm", {})).get("model", "embedded")) for t in trials}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
        arm = trial.config.get("arm", {})
        parts = name_parts(arm, with_model=len(models) > 1)  # a model column when the space has a model axis
        for key, _ in parts:
            if key not in columns:
                columns.append(key)
        result = trial.last_result or {}
        value = result.get(metric)
        key = trial.trial_id
        if isinstance(value, (int, float)) and not math.isnan(value):
            old = best.get(key)
            best[key] = value if old is None or (value > old if mode == "max" else value < old) else old
        if trial.status == "TERMINATED" and result.get("time_total_s"):
            durations.append(float(result["time_total_s"]))
        rows.append((arm.get("name", ""), dict(parts), trial.status, result, best.get(key)))
    tail = [c for c in ("lr", "seed") if c in columns]
    columns = [c for c in columns if c not in tail] + tail  # arm, method, preset, shape settings, lr, seed
    elapsed = time.time() - began
    done = counts["TERMINATED"] + counts["ERROR"]
    left = len(trials) - done
    eta = ""
    if durations and left:
        running = max(counts["RUNNING"], 1)
        eta = f", ETA ~{_duration(sum(durations) / len(durations) * left / running)}"
    head = (
        f"[sweep] {len(trials)} trials: {counts['TERMINATED']} done, {counts['RUNNING']} running, "
        f"{counts['PENDING'] + counts['PAUSED']} pending, {counts['ERROR']} errored | {_duration(elapsed)} elapsed{eta}"
    )
    short_metric = metric.replace("label_", "")[:10]
    header = columns + ["status", "epoch", "val_loss", short_metric, "best"]
    table = []
    for arm, parts, status, result, best_value in rows:
        cells = [arm] + [parts.get(c, "") for c in columns[1:]]
        value = result.get(metric)
        cells += [
            status.lower()[:10],
            _fmt(result.get("epoch", result.get("training_iteration", ""))),
            f"{result['val_loss']:.4f}" if isinstance(result.get("val_loss"), (int, float)) else "",
            f"{value:.4f}" if isinstance(value, (int, float)) and not math.isnan(value) else "",
            f"{best_value:.4f}" if best_value is not None else "",
        ]
        table.append([c[:16] for c in cells])
    widths = [max(len(str(h)), *(len(r[i]) for r in table)) for i, h in enumerate(header)] if table else []
    lines = [head]
    if table:
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join(lines)


def quiet_driver(folder: Path, *, verbose: bool) -> Path | None:
    """Send Ray's info and warning lines and Python warnings to ``folder/driver.log``; the console keeps errors
    (and this project's own warnings). Returns the log's path, or None when ``verbose`` (nothing changes)."""
    if verbose:
        return None
    import ray  # noqa: F401  (sets up Ray's own console handler, which is turned down here)

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DRIVER_LOG
    ray_logger = logging.getLogger("ray")
    handler = _driver_log_handler()
    if handler is None:
        handler = logging.FileHandler(path)
        handler.cxr_driver_log = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        ray_logger.addHandler(handler)
    _consoles_to_errors(ray_logger)  # ray.init may add its console handler again: call this after it too
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False
    return path


def _driver_log_handler() -> logging.Handler | None:
    """The ``driver.log`` handler :func:`quiet_driver` put on Ray's logger, if any."""
    return next((h for h in logging.getLogger("ray").handlers if getattr(h, "cxr_driver_log", False)), None)


def _consoles_to_errors(logger: logging.Logger) -> None:
    """Turn the logger's console handlers down to errors (its file handlers keep what they have)."""
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.ERROR)


def quiet_library(name: str) -> None:
    """Send the named logger's info and warning lines (``mlflow``, which sets up its own console handler when
    imported) to the driver's log, as :func:`quiet_driver` does for Ray's; errors still reach the console.
    Call it after importing the library. Does nothing when there is no driver log (``-v``, or no sweep)."""
    handler = _driver_log_handler()
    if handler is None:
        return
    logger = logging.getLogger(name)
    _consoles_to_errors(logger)
    if handler not in logger.handlers:
        logger.addHandler(handler)


def _stopping_in_a_finalizer(unraisable) -> None:
    """``sys.unraisablehook`` of a trial's process: a ``SystemExit`` raised inside a finalizer or a weakref
    callback is not printed; anything else is, as Python prints it.

    Why: when a sweep ends, Ray stops the trial processes still alive with SIGTERM, and its handler in the worker
    raises ``SystemExit``. If the signal lands while garbage collection runs a callback, Python cannot raise it
    there and prints "Exception ignored in: <function WeakSet...> Traceback ... SystemExit: 1" instead, which Ray
    forwards to the sweep's console after the answer (rarely; more often on a busy machine). Nothing is
    lost: the trial had finished, and the process is stopped anyway."""
    if isinstance(unraisable.exc_value, SystemExit):
        logging.getLogger(__name__).debug("SystemExit inside %r while the process stops", unraisable.object)
        return
    sys.__unraisablehook__(unraisable)


def quiet_worker() -> None:
    """In a trial's process: no library FutureWarnings/progress bars, Ray's info lines (a checkpoint was
    saved) not forwarded to the driver's console, no traceback of the SIGTERM that stops the process
    (:func:`_stopping_in_a_finalizer`); warnings and errors still are."""
    sys.unraisablehook = _stopping_in_a_finalizer
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
