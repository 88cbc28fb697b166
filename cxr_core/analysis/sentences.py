"""The summary's sentences, each computed from the numbers it states: verdicts of a method against the reference
(FFT), presets, learning rates, the protocol, what is missing, the test split, the constant baseline,
convergence and the quality/cost trade-off."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from cxr_core import methods as registry
from cxr_core.analysis.statistics import (
    MIN_SEEDS_FOR_T,
    _isnan,
    difference_interval,
    intervals_overlap,
    ratio_interval,
)
from cxr_core.analysis.tables import LR, METHOD, _short, best_config_per, stat, test_stats
from cxr_core.analysis.text import _ci, _count, _describe, _num, _pct, _seed_note, _title

CONVERGED_GAIN = 0.01  # a best configuration still gaining this much over its last epoch has not converged
# Settings that must be equal across arms for "same data, same number of optimizer steps".
PROTOCOL = (
    "config/train/epochs",
    "config/train/batch_size",
    "config/train/sampling",
    "config/train/repeat_threshold",
    "config/train/name_weight",
    "config/data/max_train",
    "config/data/split_dir",
    "config/data/max_val",
    "config/evaluation/max_new_tokens",
    "config/evaluation/uncertain",
)


def cost_shares(ref, row, *, memory_kind: str = "", whose: str = "its") -> list[str]:
    """A configuration's cost as shares of a reference configuration's (means over seeds): ``16% of its trainable
    parameters``, ``137% of its peak memory (kind)``, ``0.64x its training throughput (samples/s)``; what is
    missing is left out."""
    out = []
    for col, word in (("trainable_params", "trainable parameters"), ("peak_mem_mb", "peak memory")):
        a, b = stat(row, col)["mean"], stat(ref, col)["mean"]
        if not _isnan(a) and b and not _isnan(b):
            kind = f" ({memory_kind})" if col == "peak_mem_mb" and memory_kind else ""
            out.append(f"{_pct(a / b)} of {whose} {word}{kind}")
    a, b = stat(row, "train_samples_per_s")["mean"], stat(ref, "train_samples_per_s")["mean"]
    if not _isnan(a) and b and not _isnan(b):
        out.append(f"{a / b:.2f}x {whose} training throughput (samples/s)")
    return out


def comparison_lines(
    ref,
    row,
    *,
    metric: str,
    mode: str,
    extra_metrics: Sequence[str] = (),
    memory_kind: str = "",
    what: str | None = None,
) -> list[str]:
    """Verdict sentences comparing one configuration row with a reference one (rows of :func:`configs_table`;
    usually the best FFT configuration): quality ratio with its interval, cost ratios, and whether the two
    intervals overlap. ``what`` names the row (default: ``<its method> configuration``)."""
    name, ref_name = _title(row), _title(ref)
    what = what or f"{name} configuration"
    lines = []
    q_l, q_f = stat(row, f"best_{metric}"), stat(ref, f"best_{metric}")
    r, lo, hi = ratio_interval(q_l, q_f)
    if _isnan(r):
        quality = (
            f"scores {_num(q_l['mean'])} on validation {metric} against {_num(q_f['mean'])} for the best "
            f"{ref_name} configuration ({_describe(ref)}; no ratio: {ref_name}'s is 0)"
        )
    else:
        interval = f" (95% interval {_pct(lo)} to {_pct(hi)})" if not _isnan(lo) else ""
        if min(q_l["n"], q_f["n"]) < 2:
            interval = " (one seed: no interval)"
        elif min(q_l["n"], q_f["n"]) < MIN_SEEDS_FOR_T:
            interval = f" ({int(min(q_l['n'], q_f['n']))} seeds: no interval)"
        quality = f"reaches {_pct(r)} of the best {ref_name} configuration's ({_describe(ref)}) validation "
        quality += f"{metric}{interval}"
    cost = cost_shares(ref, row, memory_kind=memory_kind)
    joined = ", ".join(cost[:-1]) + (" and " if len(cost) > 1 else "") + cost[-1] if cost else ""
    lines.append(f"The best {what} ({_describe(row)}) {quality}" + (f", with {joined}." if cost else "."))
    for m in extra_metrics:
        a, b = stat(row, f"best_{m}"), stat(ref, f"best_{m}")
        if _isnan(a["mean"]) or _isnan(b["mean"]):
            continue
        r2, lo2, hi2 = ratio_interval(a, b)
        few = min(a["n"], b["n"]) < MIN_SEEDS_FOR_T
        iv = f" (95% interval {_pct(lo2)} to {_pct(hi2)})" if not _isnan(lo2) and not few else ""
        if _isnan(r2):
            lines.append(
                f"On {m} (at the same checkpoints): {name} {_num(a['mean'])}, {ref_name} {_num(b['mean'])}."
            )
        else:
            lines.append(f"On {m} (at the same checkpoints) it reaches {_pct(r2)} of {ref_name}'s{iv}.")
    lines.append(_overlap_sentence(q_l, q_f, name, ref_name, metric=metric, mode=mode))
    return lines


def _overlap_sentence(a: dict, b: dict, name_a: str, name_b: str, *, metric: str, mode: str) -> str:
    if _isnan(a["mean"]) or _isnan(b["mean"]):
        return f"{name_a} or {name_b} has no {metric} yet: nothing to compare."
    if a["n"] < 2 or b["n"] < 2:
        return (
            f"{name_a} {_num(a['mean'])} vs {name_b} {_num(b['mean'])} on {metric}: with one seed on at least "
            f"one side there is no interval, so the data cannot say whether the difference exceeds seed noise."
        )
    if min(a["n"], b["n"]) < MIN_SEEDS_FOR_T:
        n = int(min(a["n"], b["n"]))
        return (
            f"{name_a} {_num(a['mean'])} (seeds {_num(a['min'])} to {_num(a['max'])}) vs {name_b} "
            f"{_num(b['mean'])} (seeds {_num(b['min'])} to {_num(b['max'])}) on {metric}: with {n} seeds and no "
            "per-image records there is no trustworthy interval, so the data cannot say whether the difference "
            "exceeds seed noise; run 3 or more seeds (sweeps made by this version also keep per-image records, "
            "which give paired verdicts)."
        )
    if a["std"] == 0 and b["std"] == 0 and a["mean"] == b["mean"]:
        return (
            f"{name_a} and {name_b} score the same {metric}, {_num(a['mean'])}, on every seed: no difference."
        )
    overlap = intervals_overlap(a, b)
    d, dlo, dhi = difference_interval(a, b)
    diff = f"difference {name_a} - {name_b} {d:+.3f}, Welch 95% interval {dlo:+.3f} to {dhi:+.3f}"
    if overlap:
        return (
            f"Their 95% intervals on {metric} overlap ({name_a} {_ci(a)}, {name_b} {_ci(b)}; {diff}): "
            f"{_seed_note(a, b)} the data do not separate the two."
        )
    better = (a["mean"] > b["mean"]) == (mode == "max")
    return (
        f"Their 95% intervals on {metric} do not overlap ({name_a} {_ci(a)}, {name_b} {_ci(b)}; {diff}): "
        f"{name_a} is {'better' if better else 'worse'} than {name_b} on this metric, {_seed_note(a, b)}."
    )


def preset_lines(configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Verdict sentences on each method's presets (its variants: LoRA's target modules), best configuration of
    each: the ranking and whether the top two are separated."""
    lines = []
    for method in registry.registered():
        mine = configs[configs.get(METHOD, pd.Series(dtype=object)) == method.name]
        best = (
            best_config_per(mine, "variant", metric=metric, mode=mode) if method.variant_key else mine.iloc[0:0]
        )
        if len(best) < 2:
            continue
        best = best.sort_values(f"best_{metric}_mean", ascending=(mode == "min"))
        preset = {i: registry.variant_value_of_row(r) for i, r in best.iterrows()}
        ranking = ", ".join(f"{preset[i]} {_ci(stat(r, f'best_{metric}'))}" for i, r in best.iterrows())
        lines.append(
            f"{method.title} presets ranked by validation {metric} (best configuration of each, mean [95% "
            f"interval]): {ranking}."
        )
        (i, top), (j, second) = list(best.iterrows())[:2]
        lines.append(
            _overlap_sentence(
                stat(top, f"best_{metric}"),
                stat(second, f"best_{metric}"),
                preset[i],
                preset[j],
                metric=metric,
                mode=mode,
            )  # fmt: skip
        )
    return lines


def lr_lines(configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Sentences on each method's learning rates: which is best, whether it lies at the edge of the grid."""
    if LR not in configs or f"best_{metric}_mean" not in configs:
        return []
    lines = []
    for method, group in configs.dropna(subset=[f"best_{metric}_mean"]).groupby(METHOD, sort=True):
        lrs = sorted(group[LR].dropna().unique())
        best = best_config_per(group, METHOD, metric=metric, mode=mode).iloc[0]
        tried = ", ".join(_short(x) for x in lrs)
        if len(lrs) < 2:
            lines.append(
                f"{method} ran at a single learning rate ({tried}): its learning rate was not tuned, so the "
                f"comparison may understate {method}."
            )
            continue
        where = ""
        if best[LR] == lrs[0]:
            where = ": the smallest tried, a lower one may do better"
        elif best[LR] == lrs[-1]:
            where = ": the largest tried, a higher one may do better"
        lines.append(f"{method}'s best learning rate is {_short(best[LR])} (of {tried}{where}).")
    by_method = best_config_per(configs, METHOD, metric=metric, mode=mode).set_index(METHOD)
    tuned = configs.groupby(METHOD)[LR].nunique()
    ref = registry.reference()
    for method in registry.compared():
        pair = [method.name, ref.name]
        if set(pair) <= set(by_method.index) and (tuned.reindex(pair) > 1).all():
            ratio = by_method.loc[method.name, LR] / by_method.loc[ref.name, LR]
            lines.append(
                f"The best {method.title} learning rate is {ratio:.3g}x the best {ref.title} one{method.lr_note}."
            )
    return lines


def protocol_lines(table: pd.DataFrame, configs: pd.DataFrame, *, metric: str) -> list[str]:
    """How fair the comparison is: seeds per configuration, learning rates per method, equal data and steps,
    selection on validation."""
    lines = []
    seeds = configs["n_seeds"]
    reported = configs[seeds > 0]
    if not reported.empty:
        lo, hi = int(reported["n_seeds"].min()), int(reported["n_seeds"].max())
        span = str(lo) if lo == hi else f"{lo} to {hi}"
        note = ""
        if lo < MIN_SEEDS_FOR_T:
            note = (
                f" With fewer than {MIN_SEEDS_FOR_T} seeds a seed-level t interval says little (with 2 seeds its "
                "half-width is 12.7 standard errors), so such configurations show the min-max over seeds."
            )
        lines.append(f"Seeds per configuration: {span} ({len(reported)} configurations with results).{note}")
    if LR in configs:
        for method, group in configs.groupby(METHOD, sort=True):
            lrs = ", ".join(_short(x) for x in sorted(group[LR].dropna().unique()))
            lines.append(f"Learning rates tried for {method}: {lrs}.")
    same, differ = [], []
    for col in PROTOCOL:
        if col in table:
            values = [str(v) for v in table[col].unique()]  # NaN too (pandas 3 keeps it missing in astype(str))
            (same if len(values) == 1 else differ).append((col.removeprefix("config/"), values))
    if same:
        lines.append("Equal for every arm: " + ", ".join(f"{c}={v[0]}" for c, v in same) + ".")
    for col, values in differ:
        lines.append(
            f"NOT equal across arms: {col} takes {', '.join(values)}: the arms did not see the same "
            f"data or number of optimizer steps."
        )
    n = configs.groupby(METHOD)["config_id"].count() if METHOD in configs else pd.Series(dtype=int)
    counts = ", ".join(f"{m} {k}" for m, k in n.items())
    lines.append(
        f"Each trial's value is its best epoch on validation {metric}; the best configuration of each method "
        f"is the one with the best mean over seeds, chosen on the same validation numbers, so those are "
        f"optimistic (more so for the method with more configurations: {counts}). "
        "The test split is the unbiased check."
    )
    return lines


def missing_lines(table: pd.DataFrame, configs: pd.DataFrame) -> list[str]:
    """What the analysis lacks: errored, unfinished or silent trials, incomplete seed sets, a missing method."""
    lines = []
    for _, row in table.iterrows():
        status = row.get("status")
        if status == "ERROR":
            lines.append(
                f"- {row['trial_id']} ({row['variant']}) errored: {row.get('error')}; "
                "left out of the statistics"
            )
        elif row.get("epochs_done", 0) == 0:
            lines.append(f"- {row['trial_id']} ({row['variant']}) is {status} and has reported nothing yet")
        elif status != "TERMINATED":
            lines.append(
                f"- {row['trial_id']} ({row['variant']}) is {status} after {row['epochs_done']} epoch(s): "
                f"its numbers are provisional"
            )
    most = int(configs["n_trials"].max()) if len(configs) else 0
    for _, row in configs.iterrows():
        if row["n_seeds"] < most:
            lines.append(f"- configuration {row['config_id']}: {row['n_seeds']} of {most} seeds have results")
    present = set(table.get(METHOD, pd.Series(dtype=object)).dropna())
    reported = set(configs.loc[configs["n_seeds"] > 0, METHOD]) if METHOD in configs else set()
    ref = registry.reference()
    if ref.name not in present:
        lines.append(
            f"- no {ref.name} trial in this sweep: the other methods have no reference to be compared with"
        )
    if not present & {m.name for m in registry.compared()}:
        lines.append(f"- no trial of another method in this sweep: the comparison with {ref.name} is one-sided")
    for method in registry.registered():
        if method.name in present and method.name not in reported:
            lines.append(f"- no {method.name} trial has results yet: the comparison cannot be made")
    return lines


def test_verdict(test: pd.DataFrame | None, *, metric: str) -> list[str]:
    """The test split's answer in one sentence per group compared with the reference (FFT), if jobs.evaluate has
    run."""
    ref = registry.reference()
    if test is None or test.empty or metric not in test or ref.name not in set(test["group"]):
        return []
    stats = test_stats(test, (metric,))
    fft = stats[ref.name][metric]
    lines = []
    for group, entry in stats.items():
        if group == ref.name:
            continue
        value = entry[metric]
        share = f" ({_pct(value['mean'] / fft['mean'])} of {ref.title}'s)" if fft["mean"] else ""
        method = registry.find(group)
        name = method.title if method is not None else group
        overlap = intervals_overlap(value, fft)
        tail = (
            "; with one seed on a side there is no interval"
            if overlap is None
            else (
                "; the 95% intervals overlap, so the test split does not separate them"
                if overlap
                else "; the 95% intervals do not overlap"
            )  # fmt: skip
        )
        lines.append(f"On the test split: {name} {metric} {_ci(value)} vs {ref.title} {_ci(fft)}{share}{tail}.")
    return lines


def baseline_lines(methods: dict, baseline: dict | None, *, metric: str, mode: str) -> list[str]:
    """A verdict sentence when a method's best configuration does not beat the constant baseline."""
    if baseline is None or metric not in baseline or not methods:
        return []
    base = baseline[metric]
    below = [
        m
        for m, row in methods.items()
        if not (row[f"best_{metric}_mean"] > base if mode == "max" else row[f"best_{metric}_mean"] < base)
    ]
    if not below:
        return []
    if len(below) == len(methods):
        return [
            f"No method's best configuration beats the constant baseline on {metric} ({base:.3f}): the "
            f"models have not learned the task beyond its most frequent report, so this comparison says little "
            f"about how well each method adapts."
        ]
    return [
        f"The best {', '.join(below)} configuration does not beat the constant baseline on {metric} "
        f"({base:.3f})."
    ]


def _against(s: dict, value: float, mode: str, *, what: str = "95% interval") -> str:
    """Where an interval (or seed range) lies relative to ``value``: wholly better, wholly worse, or across it."""
    if _isnan(s["lo"]) or s["n"] < 2:
        return " (one seed: no interval)"
    if s["lo"] <= value <= s["hi"]:
        better = (s["mean"] > value) == (mode == "max")
        return f" (but its {what} includes it)" if better else f" (its {what} includes it)"
    above = s["lo"] > value
    return f" (its {what} lies entirely {'above' if above else 'below'} it)"


def _interval_words(row) -> str:
    kind = row.get("interval") if hasattr(row, "get") else None
    return {"min-max": "seed range (min-max)", "bootstrap": "95% bootstrap interval"}.get(kind, "95% interval")


def convergence_lines(epochs: pd.DataFrame, configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """Whether the best configuration of each method had stopped improving: the mean over seeds of its
    validation ``metric`` at the last epoch minus the one before (a gain of 0.01 or more is flagged)."""
    if "config_id" not in epochs or "epoch" not in epochs or metric not in epochs or METHOD not in configs:
        return []
    lines = []
    sign = 1 if mode == "max" else -1
    for _, row in best_config_per(configs, METHOD, metric=metric, mode=mode).iterrows():
        mine = epochs[(epochs["config_id"] == row["config_id"]) & (epochs["status"] != "ERROR")]
        per_epoch = mine.dropna(subset=[metric]).groupby("epoch")[metric].mean().sort_index()
        if len(per_epoch) < 2:
            continue
        gain = sign * (per_epoch.iloc[-1] - per_epoch.iloc[-2])
        last = int(per_epoch.index[-1])
        verdict = (
            f"converged (gain below {CONVERGED_GAIN:g})"
            if gain < CONVERGED_GAIN
            else "still improving: train longer before trusting the comparison"
        )
        lines.append(
            f"Convergence, best {row[METHOD]} configuration ({row['config_id']}): validation {metric} changed by "
            f"{sign * gain:+.3f} from epoch {last - 1} to {last} (mean over seeds): {verdict}."
        )
    return lines


def paired_lines(comparisons: pd.DataFrame | None, *, kinds: Sequence[str], split: str) -> list[str]:
    """The verdict sentences of the paired comparisons of the given kinds on one split, in table order."""
    if comparisons is None or comparisons.empty:
        return []
    rows = comparisons[comparisons["kind"].isin(kinds) & (comparisons["split"] == split)]
    return [str(x) for x in rows["sentence"]]


def _unparsed_note(ref, row) -> str:
    a, b = row.get("best_unparsed_rate_mean", math.nan), ref.get("best_unparsed_rate_mean", math.nan)
    if _isnan(a) or _isnan(b):
        return ""
    return (
        f" Unparsed sentences (read as all-negative): {_title(row)} {a:.2f}, {_title(ref)} {b:.2f} of their "
        "generated sentences."
    )


def quality_cost_lines(
    ref, row, *, metric: str, memory_kind: str, planned: dict | None, explain: bool = True
) -> list[str]:
    """A method's best configuration (``row``) against the reference's (``ref``, FFT): its share of the reference's
    quality (point value; the paired comparison carries the uncertainty) and its cost, as measured on this sweep's
    model and as planned at the study's target scale (``planned``: :func:`cxr_core.study_report.planned_cost`);
    ``explain`` adds which of the two to trust for what."""
    name, ref_name = _title(row), _title(ref)
    q_l, q_f = stat(row, f"best_{metric}")["mean"], stat(ref, f"best_{metric}")["mean"]
    share = f"reaches {_pct(q_l / q_f)} of" if q_f and not _isnan(q_l) else "is compared with"
    lines = [
        f"The best {name} configuration ({_describe(row)}) {share} the best {ref_name} configuration's "
        f"({_describe(ref)}) validation {metric} ({_num(q_l)} vs {_num(q_f)})." + _unparsed_note(ref, row)
    ]
    measured = cost_shares(ref, row, whose=f"{ref_name}'s")
    if measured:
        total = stat(ref, "total_params")["mean"]
        size = f"{total / 1e6:.2f}M-parameter " if not _isnan(total) else ""
        where = f"; peak memory is {memory_kind}" if memory_kind else ""
        lines.append(f"Measured on this sweep's {size}model{where}: {name} uses {', '.join(measured)}.")
    plan = (planned or {}).get("methods", {})
    mine, theirs = plan.get(row.get(METHOD)), plan.get(ref.get(METHOD))
    if mine and theirs:
        lines.append(
            f"Planned at {planned['model']} (the study's target scale; dry-run plan: weights, gradients and AdamW "
            f"state, no activations): {name} trains {_pct(mine['trainable'] / theirs['trainable'])} of "
            f"{ref_name}'s parameters ({_count(mine['trainable'])} vs {_count(theirs['trainable'])}) and "
            f"needs {_pct(mine['memory_mb'] / theirs['memory_mb'])} of its training memory "
            f"({mine['memory_mb']:,.0f} vs {theirs['memory_mb']:,.0f} MB, fp32)."
            + (
                " For what the methods cost at scale trust these planned figures (bench.method_cost measures "
                "git-base steps); the measured memory and throughput above describe only this small model, where "
                "activations and allocator noise dominate."
                if explain
                else ""
            )
        )
    return lines


def interval_note(
    configs: pd.DataFrame, comparisons: pd.DataFrame | None, *, margin: float, n_boot: int
) -> str:
    """One paragraph on what the intervals in this report are."""
    kinds = set(configs.get("interval", pd.Series(dtype=object)).dropna())
    parts = []
    if "bootstrap" in kinds:
        parts.append(
            f"Quality intervals are 95% percentile intervals of a two-level bootstrap ({n_boot:,} resamples: the "
            "seeds, then the images of the split), so they stay inside the metric's range"
        )
    if "t" in kinds:
        parts.append(
            "configurations without per-image records show a 95% t interval over seeds, cut to the range"
        )
    if "min-max" in kinds:
        parts.append(
            "configurations with fewer than 3 seeds show the min-max over their seeds, not an interval"
        )
    text = "; ".join(parts) + "." if parts else ""
    text = text[:1].upper() + text[1:]
    if comparisons is not None and not comparisons.empty:
        text += (
            " Comparisons are paired over the same images; each verdict is one of better, worse, equivalent "
            f"within ±{margin:g} (two one-sided tests) or inconclusive (see docs/statistics.md)."
        )
    return text + " Cost columns show the mean over seeds (whiskers and ranges: min-max)."
