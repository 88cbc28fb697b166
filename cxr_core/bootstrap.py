"""Paired, two-level (seeds, then images) bootstrap intervals and comparisons of configurations.

A configuration of the study is evaluated with several training seeds on the same images. Its records
(:class:`SeedRecords`) hold, per seed and image, the parsed 14-label vector of the generated report and a few
per-image sums (loss, tokens, sentences). Every metric here is a ratio of sums over images (micro/macro F1,
precision, recall, token-weighted loss, unparsed rate), so a bootstrap resample of the images is a vector of
image weights (how often each image was drawn) and all resamples at once are one matrix product
``weights @ per_image_sums``.

Two levels, as in Bouthillier et al. (2021): each resample draws the seeds of a configuration with
replacement (its own random stream per side of a comparison), then the images; the statistic is the mean
over the drawn seeds of the metric on the drawn images. A comparison of two configurations uses the SAME image
resamples for both (:class:`Resampler` draws them once per split), which is Koehn's paired bootstrap
(sacrebleu's ``--paired-bs``); the probability of improvement is the fraction of resamples where one side
wins (rliable). Intervals are percentile intervals, so they lie inside the metric's range by construction.

This is our own vectorised code rather than ``scipy.stats.bootstrap``: scipy has no two-level (seed, image)
resampling, and it draws new resamples on every call, whereas here one set of image resamples is shared by
every configuration of a split so that all comparisons are paired. A test checks that the one-seed case
agrees with ``scipy.stats.bootstrap(method="percentile")``. The verdict rule is documented on
:func:`compare` and in docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.labels import COMPETITION5, LABELS
from cxr_core.metrics import positives

VERDICTS = ("a_better", "b_better", "equivalent", "inconclusive")
_IMAGE_KEY = 0  # SeedSequence spawn keys: (0,) image weights, (1, stream) seed draws
_SEED_KEY = 1
_CHUNK_INDICES = 1 << 22  # image indices drawn per chunk when building the weights (32 MB of int64)


@dataclass
class SeedRecords:
    """One configuration on one split: S seeds x N images, rows in the split's image order.

    Attributes:
        pred: (S, N, 14) float label values of the parsed generated reports: 1.0 / 0.0 / -1.0 / NaN.
        loss_sum: (S, N) summed token cross-entropy of each image's report (for ``val_loss`` / ``test_loss``).
        tokens: (S, N) report tokens scored for each image.
        unparsed: (S, N) sentences of the generated report the parser could not read.
        sentences: (S, N) sentences of the generated report.
    """

    pred: np.ndarray
    loss_sum: np.ndarray | None = None
    tokens: np.ndarray | None = None
    unparsed: np.ndarray | None = None
    sentences: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pred = np.asarray(self.pred, dtype=float)
        if self.pred.ndim != 3 or self.pred.shape[2] != len(LABELS) or 0 in self.pred.shape[:2]:
            raise CxrError(
                f"SeedRecords.pred must have shape (seeds, images, {len(LABELS)}) with at least one seed and "
                f"one image, got {self.pred.shape}"
            )
        for name in ("loss_sum", "tokens", "unparsed", "sentences"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=float)
            if value.shape != self.pred.shape[:2]:
                raise CxrError(
                    f"SeedRecords.{name} must have shape {self.pred.shape[:2]} (seeds, images), "
                    f"like pred, got {value.shape}"
                )
            setattr(self, name, value)

    @property
    def n_seeds(self) -> int:
        return self.pred.shape[0]

    @property
    def n_images(self) -> int:
        return self.pred.shape[1]

    def field(self, name: str, *, metric: str) -> np.ndarray:
        """The (S, N) array ``name``; a CxrError naming the metric when it was not recorded."""
        value = getattr(self, name)
        if value is None:
            raise CxrError(
                f"metric {metric!r} needs SeedRecords.{name}, which is None; record it or pick a label metric"
            )
        return value


# ---------------------------------------------------------------- metrics: per-image sums and their ratio


Features = Callable[[np.ndarray, SeedRecords, str, str], np.ndarray]  # (truth, records, uncertain, metric)


@dataclass(frozen=True)
class MetricSpec:
    """A metric as per-image sums (S, N, K) and a reduction of summed features (..., K) -> (...)."""

    features: Features
    reduce: Callable[[np.ndarray], np.ndarray]
    higher_is_better: bool = True
    upper: float = 1.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (sklearn's zero_division=0)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


_STATS = {
    "f1": lambda tp, fp, fn: _ratio(2 * tp, 2 * tp + fp + fn),
    "precision": lambda tp, fp, fn: _ratio(tp, tp + fp),
    "recall": lambda tp, fp, fn: _ratio(tp, tp + fn),
}


def _label_counts(cols: Sequence[int], *, pooled: bool) -> Features:
    """Per-image tp/fp/fn of the labels ``cols``: (S, N, 3) summed over labels, or (S, N, 3 * L) per label."""

    def features(truth: np.ndarray, records: SeedRecords, uncertain: str, metric: str) -> np.ndarray:
        true = positives(truth, uncertain=uncertain)[:, cols].astype(bool)  # (N, L)
        pred = positives(records.pred, uncertain=uncertain)[..., cols].astype(bool)  # (S, N, L)
        counts = np.stack([pred & true, pred & ~true, ~pred & true], axis=2).astype(np.float32)  # (S, N, 3, L)
        return counts.sum(axis=3) if pooled else counts.reshape(*counts.shape[:2], -1)

    return features


def _micro(stat: str) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: _STATS[stat](s[..., 0], s[..., 1], s[..., 2])


def _macro(stat: str) -> Callable[[np.ndarray], np.ndarray]:
    def reduce(s: np.ndarray) -> np.ndarray:
        s = s.reshape(*s.shape[:-1], 3, -1)  # (..., 3, L)
        return _STATS[stat](s[..., 0, :], s[..., 1, :], s[..., 2, :]).mean(axis=-1)

    return reduce


def _pair(num: str, den: str, *, empty_is_zero: bool = False) -> Features:
    """Features of a ratio of sums ``num / den``. A seed whose ``den`` sums to 0 is an error, or, with
    ``empty_is_zero``, a ratio of 0 (as :func:`cxr_core.metrics.report_metrics` reports it)."""

    def features(truth: np.ndarray, records: SeedRecords, uncertain: str, metric: str) -> np.ndarray:
        top, bottom = records.field(num, metric=metric), records.field(den, metric=metric)
        if not empty_is_zero and np.any(bottom.sum(axis=1) <= 0):
            raise CxrError(f"metric {metric!r}: SeedRecords.{den} sums to 0 over the images of a seed")
        return np.stack([top, bottom], axis=2).astype(np.float32)  # (S, N, 2)

    return features


def _registry() -> dict[str, MetricSpec]:
    """Every supported metric by name: the one table that both validates names and dispatches."""
    table: dict[str, MetricSpec] = {}
    idx5 = [LABELS.index(name) for name in COMPETITION5]
    for prefix, cols in (("label", list(range(len(LABELS)))), ("label5", idx5)):
        for stat in _STATS:
            table[f"{prefix}_{stat}_micro"] = MetricSpec(_label_counts(cols, pooled=True), _micro(stat))
            table[f"{prefix}_{stat}_macro"] = MetricSpec(_label_counts(cols, pooled=False), _macro(stat))
    for stat in _STATS:
        for i, label in enumerate(LABELS):
            table[f"{stat}/{label}"] = MetricSpec(_label_counts([i], pooled=True), _micro(stat))
    loss = MetricSpec(_pair("loss_sum", "tokens"), lambda s: _ratio(s[..., 0], s[..., 1]), False, math.inf)
    table["val_loss"] = table["test_loss"] = loss
    # A model that generates no sentence at all (an untrained or diverged one) has nothing unparsed: rate 0.
    table["unparsed_rate"] = MetricSpec(
        _pair("unparsed", "sentences", empty_is_zero=True), lambda s: _ratio(s[..., 0], s[..., 1]), False
    )
    return table


METRICS: dict[str, MetricSpec] = _registry()


def _spec(metric: str) -> MetricSpec:
    if metric not in METRICS:
        raise CxrError(f"unknown metric {metric!r}; supported: {', '.join(METRICS)}")
    return METRICS[metric]


def higher_is_better(metric: str) -> bool:
    """False for losses and ``unparsed_rate``, True for the label metrics."""
    return _spec(metric).higher_is_better


def metric_range(metric: str) -> tuple[float, float]:
    """(0, 1) for rates and label metrics, (0, inf) for losses."""
    return (0.0, _spec(metric).upper)


def sparse_labels(truth: np.ndarray, *, uncertain: str = "negative", min_positives: int = 10) -> list[str]:
    """Labels with fewer than ``min_positives`` positives in ``truth`` (N, 14): name them under macro metrics,
    whose per-label F1 is noisy (or 0 by zero_division) for such labels."""
    counts = positives(np.asarray(truth, dtype=float), uncertain=uncertain).sum(axis=0)
    return [label for label, n in zip(LABELS, counts, strict=True) if n < min_positives]


# ---------------------------------------------------------------- resampling


class Resampler:
    """The image resamples of one split, drawn once and shared by every configuration (paired comparisons).

    Attributes:
        weights: (n_boot, n_images) float32: how many times each image is drawn in each resample
            (multinomial with equal probabilities; each row sums to n_images).
    """

    def __init__(self, n_images: int, *, n_boot: int = 1000, seed: int = 0) -> None:
        if int(n_images) < 1 or int(n_boot) < 1:
            raise CxrError(f"Resampler needs n_images >= 1 and n_boot >= 1, got {n_images} and {n_boot}")
        self.n_images, self.n_boot, self.seed = int(n_images), int(n_boot), int(seed)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_IMAGE_KEY,)))
        self.weights = np.empty((self.n_boot, self.n_images), dtype=np.float32)
        rows = max(1, _CHUNK_INDICES // self.n_images)
        for start in range(0, self.n_boot, rows):
            chunk = min(rows, self.n_boot - start)
            idx = rng.integers(0, self.n_images, size=(chunk, self.n_images))
            idx += np.arange(chunk)[:, None] * self.n_images  # row offsets: one bincount for the chunk
            counts = np.bincount(idx.ravel(), minlength=chunk * self.n_images)
            self.weights[start : start + chunk] = counts.reshape(chunk, self.n_images)

    def seed_draws(self, n_seeds: int, *, stream: int) -> np.ndarray:
        """(n_boot, n_seeds) seed indices drawn with replacement; fixed per (seed, stream), independent
        between streams."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_SEED_KEY, int(stream))))
        return rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))

    def __repr__(self) -> str:
        return f"Resampler(n_images={self.n_images}, n_boot={self.n_boot}, seed={self.seed})"


@dataclass
class _Side:
    """One configuration's metric values: per seed on all images, and per (resample, seed)."""

    per_seed: np.ndarray  # (S,)
    boot: np.ndarray | None  # (B, S)


def _check(truth: np.ndarray, records: SeedRecords, resampler: Resampler | None) -> np.ndarray:
    truth = np.asarray(truth, dtype=float)
    if truth.shape != (records.n_images, len(LABELS)):
        raise CxrError(
            f"truth must have shape ({records.n_images}, {len(LABELS)}) to match the records' "
            f"images, got {truth.shape}"
        )
    if resampler is not None and resampler.n_images != records.n_images:
        raise CxrError(
            f"the resampler was drawn for {resampler.n_images} images, the records have "
            f"{records.n_images}; build one Resampler per split"
        )
    return truth


def _side(truth, records: SeedRecords, *, metric: str, uncertain: str, resampler: Resampler | None) -> _Side:
    spec = _spec(metric)
    truth = _check(truth, records, resampler)
    x = spec.features(truth, records, uncertain, metric)  # (S, N, K)
    per_seed = spec.reduce(x.sum(axis=1, dtype=np.float64))
    if resampler is None:
        return _Side(per_seed, None)
    s, n, k = x.shape
    sums = resampler.weights @ x.transpose(1, 0, 2).reshape(n, s * k)  # (B, N) @ (N, S*K): all seeds at once
    return _Side(per_seed, spec.reduce(sums.reshape(-1, s, k).astype(np.float64)))


def _two_level(boot: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(B, S) values, (B, S) seed draws -> (B,) mean over the drawn seeds. Sorting the draws makes the
    same multiset of seeds give bit-identical means (exact ties between identical configurations)."""
    return np.take_along_axis(boot, np.sort(draws, axis=1), axis=1).mean(axis=1)


def _bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise CxrError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _drawn(truth, records: SeedRecords, *, metric: str, uncertain: str, resampler: Resampler, stream: int):
    """(the configuration's side, its two-level statistic on each resample of ``stream``)."""
    side = _side(truth, records, metric=metric, uncertain=uncertain, resampler=resampler)
    return side, _two_level(side.boot, resampler.seed_draws(records.n_seeds, stream=stream))


# ---------------------------------------------------------------- public statistics


def point(truth: np.ndarray, records: SeedRecords, *, metric: str, uncertain: str = "negative") -> float:
    """The mean over seeds of ``metric`` on all images (equal to :func:`cxr_core.metrics.label_metrics`
    per seed for label metrics; losses and unparsed_rate are ratios of sums).

    Raises:
        CxrError: unknown metric or uncertain policy, shapes that do not match, a needed field missing.
    """
    return float(_side(truth, records, metric=metric, uncertain=uncertain, resampler=None).per_seed.mean())


def interval(
    truth: np.ndarray,
    records: SeedRecords,
    *,
    metric: str,
    uncertain: str = "negative",
    resampler: Resampler,
    confidence: float = 0.95,
    stream: int = 0,
) -> dict:
    """Two-level percentile bootstrap interval of one configuration (image-only with one seed).

    Returns:
        ``{metric, mean, lo, hi, confidence, n_seeds, n_images, seed_min, seed_max}``: ``mean`` is
        :func:`point`; ``seed_min`` / ``seed_max`` are the per-seed values on all images.
    """
    side, stat = _drawn(truth, records, metric=metric, uncertain=uncertain, resampler=resampler, stream=stream)
    lo, hi = _bounds(stat, confidence)
    return {"metric": metric, "mean": float(side.per_seed.mean()), "lo": lo, "hi": hi, "confidence": confidence,
            "n_seeds": records.n_seeds, "n_images": records.n_images,
            "seed_min": float(side.per_seed.min()), "seed_max": float(side.per_seed.max())}  # fmt: skip


def resampled(
    truth: np.ndarray,
    records: SeedRecords,
    *,
    metric: str,
    uncertain: str = "negative",
    resampler: Resampler,
    stream: int = 0,
) -> np.ndarray:
    """(n_boot,) the two-level statistic of one configuration on each resample: the draws behind
    :func:`interval` (same ``stream``, same values). Ratios and differences of several configurations computed
    resample by resample from these, all drawn with one :class:`Resampler` and each on its own stream, are paired
    over the images and independent over the seeds, as :func:`compare` is."""
    return _drawn(truth, records, metric=metric, uncertain=uncertain, resampler=resampler, stream=stream)[1]


def percentile_interval(values: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of resampled ``values`` (NaN, NaN when any is not finite, e.g. a ratio whose
    denominator was 0 on a resample)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        return math.nan, math.nan
    return _bounds(values, confidence)


def _verdict(lo: float, hi: float, lo90: float, hi90: float, *, margin: float, higher: bool) -> str:
    if -margin < lo90 and hi90 < margin:
        return "equivalent"
    if lo > 0 or hi < 0:
        return "a_better" if (lo > 0) == higher else "b_better"
    return "inconclusive"


def compare(
    truth: np.ndarray,
    a: SeedRecords,
    b: SeedRecords,
    *,
    metric: str,
    uncertain: str = "negative",
    resampler: Resampler,
    margin: float = 0.02,
    confidence: float = 0.95,
    streams: tuple[int, int] = (1, 2),
) -> dict:
    """Paired two-level bootstrap of the difference a - b (same image resamples, independent seed draws).

    Verdict rule, in this order: ``equivalent`` when the 90% interval of the difference lies strictly
    inside (-margin, +margin) (two one-sided tests at 5%, TOST); otherwise ``a_better`` / ``b_better``
    when the ``confidence`` (95%) interval excludes 0, the direction following :func:`higher_is_better`;
    otherwise ``inconclusive``, with ``settle`` estimating what would decide it (see :func:`_settle`).

    Returns:
        ``{metric, difference, lo, hi, lo90, hi90, half_width, p_a_better, verdict, margin, n_images,
        n_seeds_a, n_seeds_b, settle}``; ``p_a_better`` is the fraction of resamples where a is better
        (ties count half); ``settle`` is None unless the verdict is inconclusive.

    Raises:
        CxrError: unknown metric, records of different images, a margin below 0.
    """
    if a.n_images != b.n_images:
        raise CxrError(
            f"compare needs both configurations on the same images, got {a.n_images} and {b.n_images}"
        )
    if margin < 0:
        raise CxrError(f"margin must be >= 0, got {margin}")
    opts = {"metric": metric, "uncertain": uncertain, "resampler": resampler}
    side_a, side_b = _side(truth, a, **opts), _side(truth, b, **opts)
    draws_a, draws_b = (
        resampler.seed_draws(a.n_seeds, stream=streams[0]),
        resampler.seed_draws(b.n_seeds, stream=streams[1]),
    )
    diff = _two_level(side_a.boot, draws_a) - _two_level(side_b.boot, draws_b)
    higher = higher_is_better(metric)
    (lo, hi), (lo90, hi90) = _bounds(diff, confidence), _bounds(diff, 0.90)
    wins = diff > 0 if higher else diff < 0
    out = {"metric": metric, "difference": float(side_a.per_seed.mean() - side_b.per_seed.mean()),
           "lo": lo, "hi": hi, "lo90": lo90, "hi90": hi90, "half_width": (hi - lo) / 2,
           "p_a_better": float(wins.mean() + 0.5 * (diff == 0).mean()),
           "verdict": _verdict(lo, hi, lo90, hi90, margin=margin, higher=higher), "margin": margin,
           "confidence": confidence, "n_images": a.n_images, "n_seeds_a": a.n_seeds, "n_seeds_b": b.n_seeds,
           "settle": None}  # fmt: skip
    if out["verdict"] == "inconclusive":
        out["settle"] = _settle(side_a, side_b, draws_a, draws_b, out)
    return out


def _seed_parts(side: _Side, draws: np.ndarray) -> tuple[float, float]:
    """(interaction, seed) variance of one side's mean over its S seeds, at the current N and S.

    interaction: seed x image noise (each seed errs on different images), which shrinks with more images
    AND more seeds: a single seed's image-bootstrap variance minus that of the seed mean is
    interaction * (S - 1). seed: the seeds-only bootstrap variance less the interaction it also carries
    (unbiased, so it can come out below 0; the caller clips the sum of both sides). With one seed neither
    can be estimated and both are 0.
    """
    s = side.boot.shape[1]
    if s < 2:
        return 0.0, 0.0
    single, mean = float(side.boot.var(axis=0).mean()), float(side.boot.mean(axis=1).var())
    interaction = max(0.0, single - mean) / (s - 1)
    seeds_only = float(side.per_seed[draws].mean(axis=1).var())
    return interaction, seeds_only - interaction * (s - 1) / s


def _settle(side_a: _Side, side_b: _Side, draws_a: np.ndarray, draws_b: np.ndarray, result: dict) -> dict:
    """How many images (current seeds) or seeds per side (current images) would decide an inconclusive result.

    Variance split of the difference: v_img, bootstrapped over images only (seeds fixed at their mean),
    scales as 1/N; each side's seed part (seeds only, less the seed x image interaction, see
    :func:`_seed_parts`) as 1/S; with more seeds v_img keeps its paired-image part and its interaction part
    shrinks as 1/S. Deciding needs either the 95% interval to exclude 0 (half-width < |d|) or the 90% interval
    to fit in +-margin (half-width < margin - |d|); the looser of the two sets the target variance, a
    fraction ``r`` of today's (half-widths scale as the standard deviation). Assumes d stays as it is.
    """
    d, margin, n = abs(result["difference"]), result["margin"], result["n_images"]
    h95, h90 = result["half_width"], (result["hi90"] - result["lo90"]) / 2
    r = (d / h95) ** 2 if h95 > 0 else 0.0
    if d < margin and h90 > 0:
        r = max(r, ((margin - d) / h90) ** 2)
    (i_a, t_a), (i_b, t_b) = _seed_parts(side_a, draws_a), _seed_parts(side_b, draws_b)
    v_img = float(np.var(side_a.boot.mean(axis=1) - side_b.boot.mean(axis=1)))
    seed = max(0.0, t_a + t_b)  # the seed part of the difference's variance, at the current seeds
    target = r * (v_img + seed)
    paired = max(0.0, v_img - i_a - i_b)  # the image part that more seeds leave as it is
    scaled = (i_a + t_a) * result["n_seeds_a"] + (i_b + t_b) * result["n_seeds_b"]  # / S' at S' seeds per side
    images = math.ceil(v_img * n / (target - seed)) if v_img > 0 and target > seed else None
    seeds = math.ceil(scaled / (target - paired)) if scaled > 0 and target > paired else None
    return {
        "images": None if images is None else max(images, n + 1),
        "seeds": None if seeds is None else max(seeds, result["n_seeds_a"] + 1, result["n_seeds_b"] + 1),
    }


# ---------------------------------------------------------------- sentences


def _num(x: float) -> str:
    """Signed, 3 decimals; '+0.000' rather than '-0.000'."""
    return f"{0.0 if abs(x) < 5e-4 else x:+.3f}"


def _about(n: int) -> str:
    """Round up to two significant figures, with thousands separators: 2,371 -> '2,400'."""
    step = 10 ** max(0, len(str(n)) - 2)
    return f"{-(-n // step) * step:,}"


def _tail(result: dict) -> str:
    seeds = "seed" if result["n_seeds_a"] == result["n_seeds_b"] == 1 else "seeds"
    return (
        f"P(better) {result['p_a_better']:.2f}, {result['n_images']:,} images, "
        f"{result['n_seeds_a']} vs {result['n_seeds_b']} {seeds}"
    )


def _settle_clause(settle: dict) -> str:
    images, seeds = settle["images"], settle["seeds"]
    if images and seeds:
        return f"about {_about(images)} images or {seeds} seeds per side would settle it"
    if images:
        return f"about {_about(images)} images would settle it; more seeds alone would not"
    if seeds:
        return f"about {seeds} seeds per side would settle it; more images alone would not"
    return "neither more images nor more seeds alone would settle it, only more of both"


def verdict_sentence(name_a: str, name_b: str, result: dict, *, metric: str, split: str = "validation") -> str:
    """One sentence for a :func:`compare` result, in one of four forms (better, worse, equivalent, undecided).

    Raises:
        CxrError: a result whose verdict is not one of :data:`VERDICTS`.
    """
    verdict, where = result["verdict"], f"on {split} {metric}"
    ci95 = f"{_num(result['lo'])} to {_num(result['hi'])}"
    diff = f"difference {_num(result['difference'])}"
    if verdict in ("a_better", "b_better"):
        word = "better" if verdict == "a_better" else "worse"
        return f"{name_a} is {word} than {name_b} {where}: {diff} (95% interval {ci95}), {_tail(result)}."
    if verdict == "equivalent":
        ci90 = f"{_num(result['lo90'])} to {_num(result['hi90'])}"
        return (
            f"{name_a} and {name_b} are equivalent within ±{result['margin']:g} {where}: {diff} "
            f"(90% interval {ci90}), {_tail(result)}."
        )
    if verdict == "inconclusive":
        width = result["hi"] - result["lo"]
        return (
            f"The data do not separate {name_a} and {name_b} {where}: {diff} (95% interval {ci95}, "
            f"width {width:.3f}), {_tail(result)}; {_settle_clause(result['settle'])}."
        )
    raise CxrError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
