"""Typed configuration of one trial, built from a (resolved) dict; unknown keys and wrong types fail early.

A trial config is what one arm of a search space becomes once Tune has picked a value for every
distribution: ``{name, method, model, data, train, evaluation, resources}`` plus one section per registered
method (``fft``, ``lora``, ...: see :mod:`cxr_core.methods`), of which the trial's ``method`` uses its own.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field

from cxr_core import methods
from cxr_core.errors import CxrError, choices


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _constant(progress: float) -> float:
    return 1.0


# ``train.schedule``: name -> the learning-rate factor after the warmup, as a function of the progress through the
# remaining steps (0 to 1). Validation and the trial's LR schedule (cxr_core.trial.lr_lambda) both use this table.
SCHEDULES = {"cosine": _cosine, "constant": _constant}
# ``train.sampling``: name -> whether an epoch draws its images by repeat factor (cxr_core.dataset.sample_weights)
# instead of each image once. Validation and the trial's epoch (cxr_core.trial.train_epoch) both use this table.
SAMPLINGS = {"uniform": False, "repeat_factor": True}
# How to fix a trial that requires a GPU (``resources.require_gpu``, ``--require-gpu``) where torch sees none:
# the end of the driver's and the trial's error lines.
REQUIRE_GPU_FIX = (
    "run it where torch sees a GPU (torch's CUDA build: pip installs it from PyPI on Linux; scripts/gpu_check.sh "
    "checks it), set resources.gpu = 0, or drop --require-gpu (resources.require_gpu) to train on the CPU"
)
PRECISIONS = ("auto", "fp32", "bf16")
IMAGE_POLICIES = ("skip", "error")


@dataclass
class DataConfig:
    """Where the split CSVs (seed format) and the images are.

    Attributes:
        split_dir: folder with ``train_split.csv``, ``val_split.csv`` (and ``test_split.csv``).
        image_root: the MIMIC-CXR-JPG root; image paths are ``files/p../p{subject}/s{study}/{dicom}.jpg``.
        max_train, max_val: use only the first N rows (0 = all), for quick runs.
        image_policy: ``skip`` a missing or unreadable image (counted) or raise an ``error``.
        cache_dir: node-local image cache (decoded and resized once, shared by every trial on the node):
            ``auto`` = ``$CXR_CACHE_DIR`` or ``data/cache`` of the checkout; ``none`` = run the processor
            in every trial instead; or a folder.
        cache_workers: processes that build the cache; 0 = every CPU of the node the trial may use.
        feature_cache: ``auto`` = when nothing in the image encoder trains (LoRA on the text decoder, FFT with
            ``fft.freeze: vision``), compute its output once per image and reuse it (:mod:`cxr_core.feature_cache`);
            ``off`` = run the encoder in every step.
    """

    split_dir: str = "data/demo"
    image_root: str = "data/synthetic"
    max_train: int = 0
    max_val: int = 0
    image_policy: str = "skip"
    cache_dir: str = "auto"
    cache_workers: int = 0
    feature_cache: str = "auto"


@dataclass
class TrainConfig:
    """Optimisation. ``lr`` is the peak learning rate after a linear warmup of ``warmup_ratio`` of the steps.

    ``sampling``: how an epoch draws its training images: ``uniform`` (each image once, shuffled) or
    ``repeat_factor`` (as many draws as images, with replacement, an image weighted by the repeat factor of its
    rarest positive label, ``max(1, sqrt(repeat_threshold / f))`` for a label positive in a fraction ``f`` of the
    training images: Gupta et al. 2019's repeat-factor sampling at a fixed epoch length, so every method gets
    the same number of steps; :func:`cxr_core.dataset.sample_weights`).

    ``name_weight``: the weight, in the training loss, of the tokens that name a finding stated present ("N" in
    "Evidence of N is present."); every other token weighs 1, so 1 (the default) is the model's own loss.
    Above 1 the decoder is pushed to name what it sees rather than the common findings of that place in the
    report (:func:`cxr_core.dataset.name_weights`; bench.rare_labels measures it). The reported losses stay
    unweighted.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    num_threads: int = 0
    precision: str = "auto"
    sampling: str = "uniform"
    repeat_threshold: float = 0.1
    name_weight: float = 1.0


@dataclass
class EvalConfig:
    """Validation: greedy generation of up to ``max_new_tokens``, parsed back into labels."""

    max_new_tokens: int = 128
    batch_size: int = 64
    uncertain: str = "negative"


@dataclass
class Resources:
    """Per-trial resources, as Tune reserves them (fractions of a GPU allowed).

    ``require_gpu``: a trial with ``gpu`` > 0 where CUDA is unavailable stops with an error before it trains
    (``jobs.sweep --require-gpu`` sets it everywhere), instead of training on the CPU and saying so.
    """

    cpu: float = 1.0
    gpu: float = 0.0
    require_gpu: bool = False


@dataclass
class TrialBase:
    """The settings every trial has; :class:`TrialConfig` adds one section per registered method."""

    name: str = "trial"
    method: str = methods.reference().name
    model: str = "embedded"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    resources: Resources = field(default_factory=Resources)
    keep_checkpoints: int = 1

    @property
    def adaptation(self) -> methods.Method:
        """The trial's method, from the registry.

        Raises:
            CxrError: ``method`` names no registered method.
        """
        return methods.get(self.method)

    @property
    def method_settings(self):
        """The trial's method's own section (e.g. its ``lora`` settings)."""
        return getattr(self, self.adaptation.section)

    def checks(self) -> list[tuple[str, object, str]]:
        """Impossible values as (key, value, fix); empty when the config is sound."""
        bad: list[tuple[str, object, str]] = []

        def need(ok: bool, key: str, value: object, fix: str) -> None:
            if not ok:
                bad.append((key, value, fix))

        method = methods.find(self.method)  # None for a name the registry lacks
        need(method is not None, "method", self.method, f"must be one of {choices(methods.names())}")
        t = self.train
        need(t.epochs >= 1, "train.epochs", t.epochs, "must be a positive integer")
        need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be a positive integer")
        need(t.lr > 0 and math.isfinite(t.lr), "train.lr", t.lr, "must be a positive number")
        need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
        need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "must be in [0, 1)")
        need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"must be one of {choices(SCHEDULES)}")
        need(t.sampling in SAMPLINGS, "train.sampling", t.sampling, f"must be one of {choices(SAMPLINGS)}")
        need(0 < t.repeat_threshold <= 1, "train.repeat_threshold", t.repeat_threshold, "must be in (0, 1]")
        need(t.name_weight >= 1 and math.isfinite(t.name_weight), "train.name_weight", t.name_weight,
             "must be a number >= 1 (1 = the model's own loss)")  # fmt: skip
        need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 turns clipping off)")
        need(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be a positive integer")
        need(t.num_threads >= 0, "train.num_threads", t.num_threads, "must be >= 0 (0 = torch's default)")
        need(
            t.precision in PRECISIONS, "train.precision", t.precision, f"must be one of {', '.join(PRECISIONS)}"
        )
        if method is not None:
            bad.extend(method.checks(getattr(self, method.section)))
        need(
            self.evaluation.max_new_tokens >= 1,
            "evaluation.max_new_tokens",
            self.evaluation.max_new_tokens,
            "must be >= 1",
        )
        need(
            self.evaluation.batch_size >= 1, "evaluation.batch_size", self.evaluation.batch_size, "must be >= 1"
        )
        need(
            self.evaluation.uncertain in ("negative", "positive"),
            "evaluation.uncertain",
            self.evaluation.uncertain,
            "must be negative or positive",
        )
        need(
            self.data.image_policy in IMAGE_POLICIES,
            "data.image_policy",
            self.data.image_policy,
            f"must be one of {', '.join(IMAGE_POLICIES)}",
        )
        need(self.data.max_train >= 0, "data.max_train", self.data.max_train, "must be >= 0 (0 = all rows)")
        need(self.data.max_val >= 0, "data.max_val", self.data.max_val, "must be >= 0 (0 = all rows)")
        need(
            self.data.cache_workers >= 0,
            "data.cache_workers",
            self.data.cache_workers,
            "must be >= 0 (0 = all)",
        )
        need(self.data.feature_cache in ("auto", "off"), "data.feature_cache", self.data.feature_cache,
             "must be auto or off")  # fmt: skip
        need(
            0 < self.resources.cpu < math.inf,
            "resources.cpu",
            self.resources.cpu,
            "must be a finite number > 0",
        )
        g = self.resources.gpu
        need(
            g >= 0 and (g <= 1 or float(g).is_integer()),
            "resources.gpu",
            g,
            "must be a share in [0, 1] or a whole number",
        )
        need(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        return bad


# One section per registered method, named after it (``fft: {freeze: none}``, ``lora: {r: 8, ...}``), with the
# method's own dataclass and defaults: a new method brings its section with it.
TrialConfig = dataclasses.make_dataclass(
    "TrialConfig",
    [(m.section, m.Section, field(default_factory=m.Section)) for m in methods.registered()],
    bases=(TrialBase,),
)
TrialConfig.__module__ = __name__
TrialConfig.__doc__ = (
    """One trial: the common settings of :class:`TrialBase` and every registered method's section."""
)


def _coerce(value, hint, key: str):
    """Check ``value`` against a field's type hint; ints are accepted for floats. Returns the value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, key)
            except CxrError as exc:
                errors.append(exc)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise CxrError(f"`{key}` must be {names}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise CxrError(f"`{key}` must be null, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise CxrError(f"`{key}` must be a list of strings, got {value!r}")
        return list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise CxrError(f"`{key}` must be {hint.__name__}, got {value!r} ({type(value).__name__})")


def build(cls, data, *, where: str = ""):
    """Build dataclass ``cls`` from a dict, recursively; unknown keys and wrong types raise CxrError."""
    if not isinstance(data, dict):
        raise CxrError(f"`{where or cls.__name__}` must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise CxrError(f"unknown key `{key}`; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, where=key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def trial_config(data: dict) -> TrialConfig:
    """A validated :class:`TrialConfig` from a resolved dict.

    Raises:
        CxrError: an unknown key, a wrong type or an impossible value (the first one found).
    """
    config = build(TrialConfig, data)
    bad = config.checks()
    if bad:
        key, value, fix = bad[0]
        raise CxrError(f"`{key}` {fix}, got {value!r}")
    return config


def to_dict(config: TrialConfig) -> dict:
    return dataclasses.asdict(config)
