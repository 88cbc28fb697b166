"""Search spaces: a declarative YAML -> validated arms of distributions (no Ray here; see tune_runner).

Layout of a space file::

    name: demo                      # experiment name (results under ray_results/NAME)
    metric: label_f1_micro          # what "best" means, and mode max|min
    mode: max
    scheduler: {type: fifo}         # fifo | asha | median
    max_concurrent_trials: 2
    defaults: {model: ..., data: {...}, train: {...}, eval: {...}, resources: {...}}
    arms:                           # one arm per method, each with its own ranges
      - name: fft
        method: fft
        train: {lr: {loguniform: [1.0e-5, 1.0e-3]}}
        num_samples: 2              # repeats of this arm (random draws)
      - name: lora
        method: lora
        lora: {r: {grid_search: [4, 16]}, target_modules: {grid_search: [vision, text]}}

A distribution is a mapping with exactly one key: ``grid_search: [..]``, ``choice: [..]``,
``uniform: [lo, hi]``, ``quniform: [lo, hi, q]``, ``loguniform: [lo, hi]``, ``randint: [lo, hi)``,
``lograndint: [lo, hi)``. Nothing in a YAML is evaluated as code.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cxr_core.config import TrialConfig, trial_config
from cxr_core.errors import CxrError, choices, lookup


@dataclass(frozen=True)
class Distribution:
    """One kind of distribution: how many numbers it takes (None: a non-empty list of any values), and how Tune's
    variant generator (``tune(ray.tune, args)``) and Optuna (``optuna(trial, name, args)``) draw from it."""

    count: int | None
    tune: Callable
    optuna: Callable


# The distributions a search space may use: parsing (:func:`_dist`), Tune's param space and Optuna's define-by-run
# space (cxr_core.tune_runner) all use this table, so a kind it lacks is never read as another.
DISTRIBUTIONS = {
    "grid_search": Distribution(None, lambda tune, a: tune.grid_search(list(a)),
                                lambda trial, name, a: trial.suggest_categorical(name, list(a))),
    "choice": Distribution(None, lambda tune, a: tune.choice(list(a)),
                           lambda trial, name, a: trial.suggest_categorical(name, list(a))),
    "uniform": Distribution(2, lambda tune, a: tune.uniform(a[0], a[1]),
                            lambda trial, name, a: trial.suggest_float(name, a[0], a[1])),
    "quniform": Distribution(3, lambda tune, a: tune.quniform(a[0], a[1], a[2]),
                             lambda trial, name, a: trial.suggest_float(name, a[0], a[1], step=a[2])),
    "loguniform": Distribution(2, lambda tune, a: tune.loguniform(a[0], a[1]),
                               lambda trial, name, a: trial.suggest_float(name, a[0], a[1], log=True)),
    "randint": Distribution(2, lambda tune, a: tune.randint(a[0], a[1]),
                            lambda trial, name, a: trial.suggest_int(name, a[0], a[1] - 1)),
    "lograndint": Distribution(2, lambda tune, a: tune.lograndint(a[0], a[1]),
                               lambda trial, name, a: trial.suggest_int(name, a[0], a[1] - 1, log=True)),
}  # fmt: skip
CODE_KEYS = ("eval", "sample_from", "function", "lambda", "!!python")
TOP_KEYS = {
    "name", "description", "metric", "mode", "scheduler", "max_concurrent_trials", "defaults", "arms",
    "max_failures", "stop", "search",
}  # fmt: skip
ARM_KEYS = {"name", "num_samples"}


@dataclass(frozen=True)
class Scheduler:
    """One ``scheduler.type``: the keys it takes with their defaults, each key's kind (``int``: a whole number
    >= 1; ``float``: a finite number >= 1), a check across keys (returns (key, fix) or None) and the builder of
    Tune's scheduler from the completed settings (Ray is imported only there)."""

    keys: dict
    kinds: dict
    build: Callable
    check: Callable = lambda settings: None


def _fifo(settings: dict):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(settings: dict):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=settings["max_t"],
        grace_period=settings["grace_period"],
        reduction_factor=settings["reduction_factor"],
    )


def _asha_check(settings: dict):
    if settings["reduction_factor"] <= 1:
        return "reduction_factor", "must be above 1 (each rung keeps 1/reduction_factor of the trials)"
    if settings["grace_period"] > settings["max_t"]:
        return "grace_period", f"must be at most max_t ({settings['max_t']}): no trial runs longer than max_t"
    return None


def _median(settings: dict):
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(time_attr="training_iteration", grace_period=float(settings["grace_period"]))


# The schedulers a search space may use (``scheduler: {type: asha, ...}``): validation (:func:`_scheduler`, at load
# time, before Ray starts) and the Tune run (:func:`build_scheduler`) both use this table, so a type it lacks, or a
# key the chosen type does not take, is refused and never ignored or run as another.
SCHEDULERS = {
    "fifo": Scheduler(keys={}, kinds={}, build=_fifo),
    "asha": Scheduler(keys={"grace_period": 1, "reduction_factor": 4.0, "max_t": 100},
                      kinds={"grace_period": int, "reduction_factor": float, "max_t": int}, build=_asha,
                      check=_asha_check),
    "median": Scheduler(keys={"grace_period": 1.0}, kinds={"grace_period": float}, build=_median),
}  # fmt: skip
MAX_NODES = 100_000  # values in one file, aliases expanded: a real space has hundreds


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Dist:
    """One distribution node: ``kind`` is a key of :data:`DISTRIBUTIONS`, ``args`` its list."""

    kind: str
    args: tuple

    def corners(self) -> list:
        """Values that validation checks: every option of a grid/choice, both ends of a range."""
        if self.kind in ("grid_search", "choice"):
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind in ("randint", "lograndint"):
            return [lo, hi - 1]
        return [lo, hi]


@dataclass
class Arm:
    name: str
    spec: dict  # nested config with Dist leaves
    num_samples: int = 1


@dataclass
class Study:
    """A parsed, validated search space."""

    path: str
    name: str
    metric: str
    mode: str
    arms: list[Arm]
    scheduler: dict = field(default_factory=lambda: {"type": "fifo"})
    max_concurrent_trials: int = 0
    max_failures: int = 0
    stop: dict = field(default_factory=dict)
    search: dict = field(default_factory=lambda: {"algorithm": "variants"})


def study_models(study: Study) -> list[str]:
    """Every model a study's trials use, first seen first: one, or each entry of a ``grid_search`` or ``choice``
    over ``model`` (the model as an axis of the search space, at the top level or per arm)."""
    from cxr_core.config import TrialBase

    out: list[str] = []
    for arm in study.arms:
        node = arm.spec.get("model", TrialBase.model)
        for value in node.corners() if isinstance(node, Dist) else [node]:
            if value not in out:
                out.append(value)
    return out


def _model_key(study: Study, model) -> str:
    """How an error names a model: `` `model` `` when set alone, its grid entry when it is one of several."""
    for arm in study.arms:
        node = arm.spec.get("model")
        if isinstance(node, Dist) and model in node.args:
            return f"`model` {node.kind} entry {model!r} of {list(node.args)!r}"
    return "`model`"


def _fail(path: str, key: str, value, fix: str) -> CxrError:
    return CxrError(f"`{key}` = {value!r}: {fix} (in {path})")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not _is_dist(v) and not _is_dist(out[k]):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_dist(node) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)) in DISTRIBUTIONS


def _parse_dists(node, path: str, key: str):
    """Replace distribution mappings by :class:`Dist` (code keys were refused by :func:`_refuse_code` already)."""
    if isinstance(node, dict):
        if _is_dist(node):
            kind, args = next(iter(node.items()))
            return _dist(kind, args, path, key)
        return {k: _parse_dists(v, path, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    return node


def _dist(kind: str, args, path: str, key: str) -> Dist:
    if not isinstance(args, list):
        raise _fail(path, f"{key}.{kind}", args, "give a list of values")
    if not args:
        raise _fail(path, f"{key}.{kind}", args, "the list is empty; give at least one value")
    want = DISTRIBUTIONS[kind].count
    if want is not None:
        if len(args) != want or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            form = "[low, high, q]" if want == 3 else "[low, high]"
            raise _fail(path, f"{key}.{kind}", args, f"give {form} as numbers")
        if args[0] >= args[1]:
            raise _fail(path, f"{key}.{kind}", args, "low must be below high")
        if kind in ("loguniform", "lograndint") and args[0] <= 0:
            raise _fail(path, f"{key}.{kind}", args, "a log scale needs low > 0")
        if kind in ("randint", "lograndint") and not all(isinstance(a, int) for a in args):
            raise _fail(path, f"{key}.{kind}", args, "give integer bounds")
    return Dist(kind, tuple(args))


def _absolute(value):
    if isinstance(value, Dist):
        return Dist(value.kind, tuple(_absolute(v) for v in value.args))
    if isinstance(value, str) and value and "://" not in value:
        try:
            return str(Path(value).expanduser().resolve())
        except (ValueError, RuntimeError, OSError) as exc:  # a NUL byte, ~unknown_user, a loop of links
            raise CxrError(f"path {value!r} cannot be used: {exc}; give a plain folder path") from None
    return value


def _absolute_paths(spec: dict) -> dict:
    """Data folders (and a local model folder) made absolute against the current directory: Tune runs each
    trial in its own folder, and on a cluster every node must see the same absolute paths."""
    data = spec.get("data")
    if isinstance(data, dict):
        for key in ("split_dir", "image_root", "cache_dir"):
            if key in data and data[key] is not None:
                data[key] = _absolute(data[key])
    model = spec.get("model")
    if isinstance(model, str) and model.startswith((".", "/", "~")):
        spec["model"] = _absolute(model)
    elif isinstance(model, Dist) and model.kind in ("grid_search", "choice"):  # a model axis: each folder entry
        local = lambda v: isinstance(v, str) and v.startswith((".", "/", "~"))  # noqa: E731
        spec["model"] = Dist(model.kind, tuple(_absolute(v) if local(v) else v for v in model.args))
    return spec


def _dist_leaves(node, prefix=()) -> list[tuple[tuple, Dist]]:
    if isinstance(node, Dist):
        return [(prefix, node)]
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _dist_leaves(v, (*prefix, k))]
    return []


def _set(node: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def corner_configs(arm: Arm, *, limit: int = 4096) -> list[dict]:
    """Concrete configs covering every grid/choice option and both ends of every range of an arm."""
    leaves = _dist_leaves(arm.spec)
    options = [leaf[1].corners() for leaf in leaves]
    combos = itertools.product(*options)
    total = 1
    for o in options:
        total *= len(o)
    if total > limit:  # too many to enumerate: vary one leaf at a time around the first corner
        first = [o[0] for o in options]
        combos = [first] + [
            first[:i] + [v] + first[i + 1 :] for i, o in enumerate(options) for v in o[1:]
        ]  # fmt: skip
    out = []
    for combo in combos:
        cfg = copy.deepcopy(arm.spec)
        for (keys, _), value in zip(leaves, combo, strict=True):
            _set(cfg, keys, value)
        out.append(cfg)
    return out


def load_study(
    path: str | Path, *, overrides: list[str] | tuple[str, ...] = (), check_paths: bool = True
) -> Study:
    """Read, parse and validate a search-space YAML (every arm, every grid option, both ends of ranges).

    Args:
        overrides: ``key.path=value`` strings applied to ``defaults`` (or a top-level key), values in YAML.
        check_paths: require the data folders to exist (off for planning with ``--dry-run``).

    Raises:
        CxrError: malformed YAML, an unknown key, a wrong type, an empty choice or an impossible value.
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CxrError(f"cannot read search space {path}: {exc.strerror or exc}; check the path") from None
    except UnicodeDecodeError as exc:
        raise CxrError(f"search space {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                       "save it as a UTF-8 YAML file") from None  # fmt: skip
    raw = _parse_yaml(text, path)
    if not isinstance(raw, dict):
        raise CxrError(
            f"{path}: a search space must be a mapping with `arms:` (and `defaults:`), got {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides, path)
    _refuse_code(raw, path)
    unknown = sorted(set(raw) - TOP_KEYS, key=str)
    if unknown:
        raise _fail(
            path,
            unknown[0],
            raw[unknown[0]],
            f"unknown key; valid top-level keys: {', '.join(sorted(TOP_KEYS))}",
        )
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _fail(path, "defaults", defaults, "must be a mapping")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise _fail(path, "arms", arms_raw, "give a non-empty list of arms, one per method")
    arms = []
    for i, arm_raw in enumerate(arms_raw):
        if not isinstance(arm_raw, dict):
            raise _fail(path, f"arms[{i}]", arm_raw, "each arm is a mapping with name and method")
        name = str(arm_raw.get("name", arm_raw.get("method", f"arm{i}")))
        num_samples = arm_raw.get("num_samples", 1)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise _fail(path, f"arms[{i}].num_samples", num_samples, "must be a positive integer")
        body = {k: v for k, v in arm_raw.items() if k not in ARM_KEYS}
        spec = _absolute_paths(_parse_dists(_merge(defaults, body), path, f"arms[{i}]"))
        spec["name"] = name
        arms.append(Arm(name=name, spec=spec, num_samples=num_samples))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise _fail(path, "arms", names, "arm names must be unique")
    study = Study(
        path=path,
        name=str(raw.get("name") or Path(path).stem),
        metric=str(raw.get("metric", "label_f1_micro")),
        mode=str(raw.get("mode", "max")),
        arms=arms,
        scheduler=_scheduler(raw.get("scheduler") or {"type": "fifo"}, path),
        max_concurrent_trials=_nonneg_int(raw.get("max_concurrent_trials", 0), "max_concurrent_trials", path),
        max_failures=_nonneg_int(raw.get("max_failures", 0), "max_failures", path),
        stop=_stop(raw.get("stop") or {}, path),
        search=_search(raw.get("search") or {}, path),
    )
    if study.mode not in ("max", "min"):
        raise _fail(path, "mode", study.mode, "use max or min")
    check_name(study.name, f"`name` (in {path})")
    validate_study(study, check_paths=check_paths)
    return study


def check_name(name: str, what: str = "--name") -> str:
    """An experiment name is one folder under the storage root: no '/', not '..', printable."""
    if name in ("", ".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise CxrError(f"{what}: {name!r} is not a plain folder name; drop '/', '..' and control characters "
                       "(results go to STORAGE/NAME, never elsewhere)")  # fmt: skip
    return name


def _parse_yaml(text: str, path: str):
    """Safe YAML (no tags that build objects) -> plain data; every failure is one CxrError line."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CxrError(
            f"refused YAML in {path}{where}: {exc.problem}; a search space holds plain values only "
            "(no !!python or other object tags): nothing in it is evaluated as code"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CxrError(
            f"malformed YAML in {path}{where}: {getattr(exc, 'problem', None) or exc}; fix the syntax"
        ) from None
    except RecursionError:
        raise CxrError(f"malformed YAML in {path}: nested too deeply; flatten the file") from None
    _check_size(raw, path)
    return raw


def _refuse_code(node, path: str, key: str = "") -> None:
    """Refuse a key that asks for code (``eval``, ``sample_from``, ...) anywhere in the document."""
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{key}.{k}" if key else str(k)
            if str(k) in CODE_KEYS or str(k).startswith("!!"):
                raise _fail(path, where, v, "code is never evaluated from a search space; use grid_search, "
                            "choice, uniform, quniform, loguniform, randint or lograndint")  # fmt: skip
            _refuse_code(v, path, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_code(v, path, f"{key}[{i}]")


def _check_size(raw, path: str) -> None:
    """Refuse a document that expands to more than MAX_NODES values (YAML aliases can nest exponentially)."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise CxrError(f"{path} expands to more than {MAX_NODES:,} values (nested YAML aliases?); "
                           "write the space out without `*alias` chains")  # fmt: skip
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def _nonneg_int(value, key: str, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(path, key, value, "must be a non-negative integer")
    return value


SEARCH_ALGORITHMS = ("variants", "optuna")


def _stop(node, path: str) -> dict:
    """``stop: {metric_name: threshold}`` (Tune stops a trial once a reported metric reaches it)."""
    if not isinstance(node, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in node.items()
    ):
        raise _fail(
            path, "stop", node, "give a mapping of metric name to number, e.g. {training_iteration: 10}"
        )
    return dict(node)


def _search(node, path: str) -> dict:
    """``search: {algorithm: variants | optuna, seed: 0}``: variants = Tune's grid + random sampling."""
    if not isinstance(node, dict):
        raise _fail(path, "search", node, "give a mapping such as {algorithm: optuna}")
    unknown = sorted(set(node) - {"algorithm", "seed"}, key=str)
    if unknown:
        raise _fail(path, f"search.{unknown[0]}", node[unknown[0]], "unknown key; valid: algorithm, seed")
    algorithm = node.get("algorithm", "variants")
    if algorithm not in SEARCH_ALGORITHMS:
        raise _fail(path, "search.algorithm", algorithm, f"use one of {', '.join(SEARCH_ALGORITHMS)}")
    return {"algorithm": algorithm, "seed": _nonneg_int(node.get("seed", 0), "search.seed", path)}


def _scheduler(node, path: str) -> dict:
    """``scheduler: {type: ..., KEY: VALUE}`` checked against :data:`SCHEDULERS`; returns every key of the type,
    the defaults filled in (what :func:`build_scheduler` builds from)."""
    if not isinstance(node, dict):
        raise _fail(path, "scheduler", node, "give a mapping such as {type: asha, grace_period: 1}")
    kind = node.get("type", "fifo")
    if not isinstance(kind, str) or kind not in SCHEDULERS:
        raise _fail(path, "scheduler.type", kind, f"unknown scheduler; use one of {choices(SCHEDULERS)}")
    spec = SCHEDULERS[kind]
    unknown = sorted(set(node) - {"type", *spec.keys}, key=str)
    if unknown:
        valid = ", ".join(["type", *spec.keys])
        raise _fail(path, f"scheduler.{unknown[0]}", node[unknown[0]],
                    f"the {kind} scheduler does not take this key; valid keys for {kind}: {valid}")  # fmt: skip
    settings = {"type": kind, **spec.keys}
    for key, value in node.items():
        if key == "type":
            continue
        whole = spec.kinds[key] is int
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value < 1e9
                or (whole and value != int(value))):  # fmt: skip
            fix = "must be a whole number >= 1 (epochs)" if whole else "must be a finite number >= 1"
            raise _fail(path, f"scheduler.{key}", value, fix)
        settings[key] = int(value) if whole else float(value)
    bad = spec.check(settings)
    if bad is not None:
        raise _fail(path, f"scheduler.{bad[0]}", settings[bad[0]], bad[1])
    return settings


def build_scheduler(settings: dict):
    """Tune's scheduler for a study's validated ``scheduler`` settings (:func:`_scheduler`), from
    :data:`SCHEDULERS`: a type the table lacks is a CxrError, never FIFO."""
    return lookup(SCHEDULERS, settings.get("type"), "scheduler.type").build(settings)


def validate_study(study: Study, *, check_paths: bool = True) -> list[TrialConfig]:
    """Check every arm's corner configs; returns them. Raises CxrError naming arm, key, value and fix."""
    checked = []
    for arm in study.arms:
        for cfg in corner_configs(arm):
            try:
                checked.append(trial_config(cfg))
            except CxrError as exc:
                raise CxrError(f"arm {arm.name}: {exc} (in {study.path})") from None
    if check_paths:
        for cfg in checked:
            if not Path(cfg.data.split_dir).is_dir():
                raise CxrError(
                    f"arm {cfg.name}: `data.split_dir` = {cfg.data.split_dir!r} does not exist; run "
                    f"`python -m jobs.prepare_data --out {cfg.data.split_dir}` or set data.split_dir (in {study.path})"
                )
            if not Path(cfg.data.image_root).is_dir():
                raise CxrError(
                    f"arm {cfg.name}: `data.image_root` = {cfg.data.image_root!r} does not exist; set it to the "
                    f"MIMIC-CXR-JPG root that holds files/ (in {study.path})"
                )
    from cxr_core.model import check_targets  # imports torch: only once the file itself is sound

    models = list(dict.fromkeys(cfg.model for cfg in checked))  # each model once, a model grid's in its order
    for model in models:
        try:
            check_targets(model, "all_linear")  # the model itself: a missing folder fails here
        except CxrError as exc:
            raise CxrError(f"{_model_key(study, model)}: {exc} (in {study.path})") from None
    for cfg in checked:  # each method checks its settings against each model (LoRA's target modules, ...)
        try:
            cfg.adaptation.check_model(cfg.model, cfg.method_settings)
        except CxrError as exc:
            on = f" on model {cfg.model}" if len(models) > 1 else ""  # which model of the grid lacks the layer
            raise CxrError(f"arm {cfg.name}{on}: {exc} (in {study.path})") from None
    return checked


def check_splits(study: Study) -> None:
    """Read every arm's train and val split CSVs once, before Ray starts: a missing or empty file, missing label
    columns, or an image path that leaves ``data.image_root`` fails here rather than in every trial.

    Raises:
        CxrError: naming the arm, the file, the problem and the fix.
    """
    from cxr_core.dataset import split_image_paths
    from cxr_core.prepare import read_split

    seen: set[tuple[str, str]] = set()
    for arm in study.arms:
        for raw in corner_configs(arm):
            data = trial_config(raw).data
            if (data.split_dir, data.image_root) in seen:
                continue
            seen.add((data.split_dir, data.image_root))
            for split in ("train", "val"):
                try:
                    split_image_paths(read_split(data.split_dir, split), data.image_root)
                except CxrError as exc:
                    raise CxrError(f"arm {arm.name}: {exc} (in {study.path})") from None


def parse_override(item: str):
    """``train.epochs=2`` -> (("train", "epochs"), 2); the value is read as YAML (safely)."""
    if "=" not in item:
        raise CxrError(f"--set {item!r}: use KEY.PATH=VALUE, for example --set train.epochs=2")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.load(value, Loader=_Loader)
    except yaml.YAMLError:
        raise CxrError(f"--set {item!r}: the value is not valid YAML") from None
    return tuple(k for k in key.strip().split(".") if k), parsed


def apply_overrides(raw: dict, overrides, path: str) -> dict:
    """Apply ``--set`` overrides: top-level keys as they are, anything else under ``defaults`` and on every
    arm that sets the same key (so ``--set train.epochs=1`` really means one epoch everywhere)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        if not keys:
            raise CxrError(f"--set {item!r}: empty key")
        if len(keys) == 1 and keys[0] in TOP_KEYS:
            raw[keys[0]] = value
            continue
        targets = [raw.setdefault("defaults", {})]
        if not isinstance(targets[0], dict):
            raise _fail(path, "defaults", targets[0], "must be a mapping")
        targets += [a for a in raw.get("arms") or [] if isinstance(a, dict) and _has(a, keys)]
        for node in targets:
            for k in keys[:-1]:
                nxt = node.setdefault(k, {})
                if not isinstance(nxt, dict):
                    raise CxrError(f"--set {item!r}: `{k}` is not a section (in {path})")
                node = nxt
            node[keys[-1]] = value
    return raw


def _has(node: dict, keys: tuple) -> bool:
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True
