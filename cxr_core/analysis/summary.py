"""summary.md: one function per section (:func:`summary_markdown` joins them), and the Markdown tables the
sections show."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from cxr_core import methods as registry
from cxr_core.analysis.scale import Scale, across_scales, params_words, scale_lines, scale_rows
from cxr_core.analysis.sentences import (
    _against,
    _interval_words,
    baseline_lines,
    comparison_lines,
    convergence_lines,
    interval_note,
    lr_lines,
    missing_lines,
    paired_lines,
    preset_lines,
    protocol_lines,
    quality_cost_lines,
    test_verdict,
)
from cxr_core.analysis.statistics import MIN_SEEDS_FOR_T, _isnan
from cxr_core.analysis.tables import (
    LR,
    METHOD,
    _short,
    best_config_per,
    configs_table,
    stat,
    test_stats,
    with_config_ids,
)
from cxr_core.analysis.text import _ci, _count, _md, _num, _pct, _title
from cxr_core.comparison import PRESET_VS_PRESET, PRESET_VS_REFERENCE, ablation_kinds
from cxr_core.labels import LABELS


def _config_rows(frame: pd.DataFrame, *, metric: str) -> list[dict]:
    rows = []
    for _, r in frame.iterrows():
        row = {"configuration": r["config_id"], "seeds": int(r["n_seeds"])}
        row[f"{metric} [interval]"] = _ci(stat(r, f"best_{metric}"))
        row["seed sd"] = _num(r.get(f"best_{metric}_std", math.nan))
        if metric != "label_f1_macro":
            row["label_f1_macro [interval]"] = _ci(stat(r, "best_label_f1_macro"))
        row["unparsed"] = _num(r.get("best_unparsed_rate_mean", math.nan), 2)
        row["bleu4 [interval]"] = _ci(stat(r, "best_bleu4"))
        row["interval"] = str(r.get("interval", "-"))
        row["val loss (final)"] = _num(r.get("final_val_loss_mean", math.nan))
        row["trainable params"] = _count(r.get("trainable_params_mean", math.nan))
        row["peak mem (MB)"] = _num(r.get("peak_mem_mb_mean", math.nan), 0)
        rows.append(row)
    return rows


def _cost_rows(best: pd.DataFrame) -> list[dict]:
    reference = registry.reference()
    mine = best[best[METHOD] == reference.name]
    ref = mine.iloc[0] if len(mine) else None
    rows = []
    for _, r in best.iterrows():
        row = {"method / preset": r["variant"], "configuration": r["config_id"]}
        for col, name, digits in (
            ("trainable_params", "trainable params", None),
            ("peak_mem_mb", "peak mem (MB)", 0),
            ("train_samples_per_s", "samples/s", 1),
            ("wall_seconds", "wall time (s)", 0),
            ("checkpoint_mb", "checkpoint (MB)", 2),
        ):
            mean = r.get(f"{col}_mean", math.nan)
            cell = _count(mean) if digits is None else _num(mean, digits)
            if (
                ref is not None
                and r["config_id"] != ref["config_id"]
                and not _isnan(mean)
                and ref.get(f"{col}_mean")
            ):
                cell += f" ({_pct(mean / ref[f'{col}_mean'])} of {reference.title})"
            row[name] = cell
        rows.append(row)
    return rows


def _lr_rows(configs: pd.DataFrame, *, metric: str, mode: str) -> list[dict]:
    if LR not in configs or f"best_{metric}_mean" not in configs:
        return []
    rows = []
    for (method, lr), group in configs.dropna(subset=[f"best_{metric}_mean"]).groupby([METHOD, LR], sort=True):
        best = best_config_per(group, METHOD, metric=metric, mode=mode).iloc[0]
        rows.append(
            {
                "method": method,
                "learning rate": _short(lr),
                "best configuration at this lr": best["config_id"],
                f"{metric} [95% CI]": _ci(stat(best, f"best_{metric}")),
                "seeds": int(best["n_seeds"]),
            }
        )
    return rows


def _per_label_rows(best: Sequence) -> list[dict]:
    """Per-label F1 of the best configuration of each method (reference first), and each one's difference to
    the reference."""
    ref = best[0]
    names = [_title(row) for row in best]
    rows = []
    for label in LABELS:
        values = [stat(row, f"best_f1/{label}") for row in best]
        if all(_isnan(v["mean"]) for v in values):
            continue
        row = {"label": label, **{f"{n} F1 [95% CI]": _ci(v) for n, v in zip(names, values, strict=True)}}
        for name, v in zip(names[1:], values[1:], strict=True):
            a = stat(ref, f"best_f1/{label}")["mean"]
            row[f"{name} - {names[0]}"] = "-" if _isnan(a) or _isnan(v["mean"]) else f"{v['mean'] - a:+.3f}"
        rows.append(row)
    return rows


def test_lines(
    test: pd.DataFrame | None,
    test_per_label: pd.DataFrame | None,
    table: pd.DataFrame,
    chosen: dict[str, str],
    *,
    metric: str,
    results: str,
    intervals: dict | None = None,
) -> list[str]:
    """The test section: jobs.evaluate's numbers (mean [interval] over the seeds of each group's chosen
    configuration) if it ran, otherwise how to run it. ``intervals`` (``{group: {metric: dict}}``, two-level
    bootstrap on the per-image test records) replaces the seed-level interval where given.

    ``chosen`` maps a group (``fft``, ``lora``, ``lora:<preset>``) to its best configuration by mean over seeds.
    """
    if test is None or test.empty:
        return [
            "The test split has not been evaluated for this sweep (no test_metrics.csv). Evaluate the "
            "checkpoints chosen on validation once, then re-run the analysis:",
            "",
            "```bash",
            f"python -m jobs.evaluate {results}",
            f"python -m jobs.analyze {results}",
            "```",
        ]
    shown = tuple(
        dict.fromkeys((metric, "label_f1_macro", "label5_f1_macro", "unparsed_rate", "bleu4", "test_loss"))
    )
    stats = test_stats(test, shown)
    for group, entry in stats.items():
        for m, iv in ((intervals or {}).get(group) or {}).items():
            if m in entry:
                entry[m] = {**entry[m], "lo": iv["lo"], "hi": iv["hi"]}
    kind = "95% two-level bootstrap interval over seeds and test images" if intervals else "seed-level interval"
    rows = []
    for group, entry in stats.items():
        rows.append(
            {
                "group": group,
                "configuration": entry["config_id"],
                "seeds": _count(entry["n"]),
                **{
                    ("test loss" if m == "test_loss" else f"test {m}"): _ci(entry[m])
                    for m in shown
                    if m in entry
                },
                "test images": _count(test[test["group"] == group]["n"].iloc[0]) if "n" in test else "-",
            }
        )
    lines = [
        "These are **test-split** numbers: jobs.evaluate scored, once, the best checkpoint (on validation) of "
        f"every seed of each group's best configuration (on validation); mean over seeds [{kind}; with fewer than "
        f"{MIN_SEEDS_FOR_T} seeds and no records, min-max]. BLEU's interval is over seeds only.",
        "",
        _md(rows),
    ]
    if not intervals:  # with per-image records the paired verdicts (in the Verdict section) say it instead
        lines += [""] + test_verdict(test, metric=metric) if test_verdict(test, metric=metric) else []
    for group, entry in stats.items():
        if group in chosen and entry["config_id"] != chosen[group]:
            lines += ["", f"Note: for {group}, the evaluated configuration ({entry['config_id']}) differs from the "
                      f"best by mean over seeds in this analysis ({chosen[group]}); re-run jobs.evaluate."]  # fmt: skip
    if test_per_label is not None and not test_per_label.empty and "f1" in test_per_label:
        pivot = test_per_label.pivot_table(index="label", columns="group", values="f1", aggfunc="mean").reindex(
            [x for x in LABELS if x in set(test_per_label["label"])]
        )
        lines += ["", "Per-label F1 on test (mean over the evaluated seeds):", ""]
        lines.append(
            _md([{"label": lab, **{g: _num(v) for g, v in row.items()}} for lab, row in pivot.iterrows()])
        )
    return lines


def _comparison_rows(comparisons: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in comparisons.iterrows():
        rows.append(
            {
                "split": r["split"],
                "kind": r["kind"],
                "A": r["a"],
                "B": r["b"],
                "metric": r["metric"],
                "A - B [95%]": f"{r['difference']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]",
                "P(A better)": f"{r['p_a_better']:.2f}",
                "verdict": str(r["verdict"]).replace("_", " "),
                "images": _count(r["n_images"]),
                "seeds A/B": f"{int(r['n_seeds_a'])}/{int(r['n_seeds_b'])}",
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- sections
# Each returns the section's lines, its "## " heading first (after a blank line), or [] when it has nothing to say.


def header_section(
    table: pd.DataFrame,
    configs: pd.DataFrame,
    *,
    metric: str,
    mode: str,
    name: str,
    kind: str,
    comparisons: pd.DataFrame | None,
    margin: float,
    n_boot: int,
    metric_source: str,
) -> list[str]:
    """The title (the methods in the sweep) and the paragraph on what a value and an interval are."""
    status = table["status"].value_counts()
    in_sweep = set(table.get(METHOD, pd.Series(dtype=object)).dropna())
    titles = [m.long_title for m in registry.registered() if m.name in in_sweep]
    lines = [f"# Sweep {name}" + (f": {' vs '.join(titles)}" if titles else ""), ""]
    lines.append(
        f"{len(table)} trials ({', '.join(f'{v} {k}' for k, v in status.items())}) in {len(configs)} "
        f"configurations (trials that differ only by seed). A trial's value is its best epoch on validation "
        f"`{metric}` ({mode}{'; ' + metric_source if metric_source else ''}); a configuration's is "
        "the mean over its seeds. "
        + interval_note(configs, comparisons, margin=margin, n_boot=n_boot)
        + (f" Peak memory is {kind} (MB)." if kind else "")
    )
    return lines


def verdict_section(
    configs: pd.DataFrame,
    by_variant: pd.DataFrame,
    best_of: dict,
    *,
    metric: str,
    mode: str,
    kind: str,
    baseline: dict | None,
    comparisons: pd.DataFrame | None,
    test: pd.DataFrame | None,
    planned: dict | None,
    sparse: Sequence[str],
) -> list[str]:
    """## Verdict: each method against FFT (paired when there are per-image records, seed-level otherwise), the
    other presets, the test split, the baseline, presets and learning rates."""
    ref = registry.reference()
    pairs = registry.pairs(list(best_of))  # each method vs FFT, then the others among themselves
    verdict = []
    paired = comparisons is not None and not comparisons.empty
    if pairs and paired:
        for i, (a, b) in enumerate(pairs):
            verdict += paired_lines(comparisons, kinds=(registry.kind(a, b),), split="test")
            verdict += paired_lines(comparisons, kinds=(registry.kind(a, b),), split="val")
            if b.reference:
                verdict += quality_cost_lines(best_of[b.name], best_of[a.name], metric=metric, memory_kind=kind,
                                              planned=planned, explain=i == 0)  # fmt: skip
        bests = {r["config_id"] for r in best_of.values()}  # said above already
        others = comparisons[~((comparisons["kind"] == PRESET_VS_REFERENCE) & comparisons["a"].isin(bests))]
        verdict += paired_lines(others, kinds=(PRESET_VS_REFERENCE,), split="test")
        verdict += paired_lines(others, kinds=(PRESET_VS_REFERENCE, PRESET_VS_PRESET, *ablation_kinds()),
                                split="val")  # fmt: skip
    elif pairs:
        extra = [m for m in ("label_f1_macro",) if m != metric]
        for a, b in pairs:
            verdict += comparison_lines(
                best_of[b.name],
                best_of[a.name],
                metric=metric,
                mode=mode,
                extra_metrics=extra,
                memory_kind=kind,
            )
        for _, row in by_variant.iterrows() if ref.name in best_of else ():  # every other preset vs FFT
            method = registry.of_row(row)
            if method is None or method.reference or row["config_id"] == best_of[method.name]["config_id"]:
                continue
            what = f"{method.title} {registry.variant_value_of_row(row)} configuration"
            line, *_ = comparison_lines(
                best_of[ref.name], row, metric=metric, mode=mode, memory_kind=kind, what=what
            )
            verdict.append(line)
        verdict += test_verdict(test, metric=metric)
    else:
        have = ", ".join(sorted(best_of, key=registry.rank))
        verdict.append(
            (f"Only {have} has results" if best_of else "No method has results yet")
            + ": no comparison between methods can be made from this sweep."
        )
    if sparse and "macro" in " ".join([metric, "label_f1_macro"]):
        verdict.append(
            f"Macro averages include labels with fewer than 10 positive validation images ({', '.join(sparse)}): "
            "their F1 is noisy and weighs as much as any other label's."
        )
    verdict += baseline_lines(best_of, baseline, metric=metric, mode=mode)
    if not paired:
        verdict += preset_lines(configs, metric=metric, mode=mode) if METHOD in configs else []
    verdict += lr_lines(configs, metric=metric, mode=mode) if METHOD in configs else []
    return ["", "## Verdict", ""] + [f"- {v}" for v in verdict]


def scale_section(scale: Scale | None, *, metric: str) -> list[str]:
    """## Across model scales (a sweep over two or more models): each model's best configuration per method, its
    quality and cost as shares of the same model's best FFT configuration, and whether the gap changes with
    scale (:mod:`cxr_core.analysis.scale`)."""
    if scale is None:
        return []
    ref = registry.reference().title
    sizes = scale.table.drop_duplicates("model")
    names = ", ".join(params_words(m, p) for m, p in zip(sizes["model"], sizes["model_params"], strict=True))
    text = (
        f"{len(sizes)} models: {names}. Each model's best configuration of each method is chosen on validation "
        f"`{metric}` among that model's configurations only (so each method's learning rate is tuned per model); "
        f"quality and cost are shares of the same model's best {ref} configuration's (means over seeds). "
        f"The verdict and comparisons above, the test evaluation (`jobs.evaluate`) and the export compare the "
        f"methods on the largest model, {sizes['model'].iloc[-1]}, so that a method is never compared with another "
        "on a different model. "
    )
    if scale.n_boot:
        text += (
            f"Ratio intervals are 95% percentile intervals of the paired two-level bootstrap ({scale.n_boot:,} "
            "resamples: the same resampled validation images for every configuration, the seeds of each resampled "
            "on their own), and so is the interval of the difference of the ratios at the largest and the smallest "
            "model, which decides whether the gap narrows, widens or does not change with scale."
        )
    else:
        text += (
            "Without per-image records, a ratio's interval is the delta-method 95% t interval over seeds (3 or more "
            "seeds), and the change of the gap with scale is not tested."
        )
    lines = ["", "## Across model scales", "", text, "", _md(scale_rows(scale.table, metric=metric)), ""]
    return lines + [f"- {v}" for v in scale_lines(scale, metric=metric)]


def protocol_section(
    table: pd.DataFrame, configs: pd.DataFrame, *, metric: str, mode: str, epochs: pd.DataFrame | None
) -> list[str]:
    """## Protocol: seeds, learning rates, equal settings, selection on validation, convergence."""
    protocol = protocol_lines(table, configs, metric=metric)
    if epochs is not None:
        protocol += convergence_lines(epochs, configs, metric=metric, mode=mode)
    return ["", "## Protocol", ""] + [f"- {v}" for v in protocol]


def best_sections(by_method: pd.DataFrame, by_variant: pd.DataFrame, *, metric: str) -> list[str]:
    """## Best configuration per method, then per method and preset (validation)."""
    lines = ["", "## Best configuration per method (validation)", ""]
    lines.append(
        _md(_config_rows(by_method, metric=metric)) if len(by_method) else "No trial has reported yet."
    )
    lines += ["", "## Best configuration per method and preset (validation)", ""]
    lines.append(
        _md(_config_rows(by_variant, metric=metric)) if len(by_variant) else "No trial has reported yet."
    )
    return lines


def baseline_section(baseline: dict | None, by_method: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """## Constant baseline: its metrics and whether each method's best beats it."""
    if baseline is None:
        return []
    lines = ["", "## Constant baseline", ""]
    lines.append(
        f"Emitting the most frequent training report for every validation image gives "
        f"label_f1_micro {baseline['label_f1_micro']:.4f}, "
        f"label_f1_macro {baseline['label_f1_macro']:.4f}, "
        f'bleu4 {baseline["bleu4"]:.4f}. The report: "{baseline["report"]}"'
    )
    if metric in baseline and len(by_method):
        lines.append("")
        for _, row in by_method.iterrows():
            s, base = stat(row, f"best_{metric}"), baseline[metric]
            beat = s["mean"] > base if mode == "max" else s["mean"] < base
            lines.append(
                f"- best {row[METHOD]}: {metric} {s['mean']:.4f} {'beats' if beat else 'does NOT beat'} "
                f"the baseline's {base:.4f}{_against(s, base, mode, what=_interval_words(row))}"
            )
    return lines


def cost_section(by_variant: pd.DataFrame, *, kind: str) -> list[str]:
    """## Cost of the best configuration per method and preset."""
    lines = ["", "## Cost (best configuration per method and preset)", ""]
    lines.append(_md(_cost_rows(by_variant)) if len(by_variant) else "No trial has reported yet.")
    lines += [
        "",
        "Means over seeds. Peak memory" + (f": {kind}." if kind else ".") + " Wall time is per trial, "
        "evaluation included; concurrent trials on shared CPUs make throughput and wall time noisy.",
    ]
    return lines


def lr_section(configs: pd.DataFrame, *, metric: str, mode: str) -> list[str]:
    """## Learning rate: the best configuration at each learning rate of each method."""
    lr_rows = _lr_rows(configs, metric=metric, mode=mode) if METHOD in configs else []
    if not lr_rows:
        return []
    return ["", "## Learning rate (best configuration at each learning rate)", "", _md(lr_rows)]


def per_label_section(best_of: dict) -> list[str]:
    """## Per-label F1 of the best FFT configuration and each other method's."""
    shown = [m for m in registry.registered() if m.name in best_of]
    if len(shown) < 2 or not shown[0].reference:
        return []
    rows = _per_label_rows([best_of[m.name] for m in shown])
    if not rows:
        return []
    versus = " vs ".join(f"best {m.title}" for m in shown)
    return ["", f"## Per-label F1 (validation): {versus} configuration", "", _md(rows)]


def test_section(
    test: pd.DataFrame | None,
    test_per_label: pd.DataFrame | None,
    table: pd.DataFrame,
    by_method: pd.DataFrame,
    by_variant: pd.DataFrame,
    *,
    metric: str,
    results: str,
    intervals: dict | None,
) -> list[str]:
    """## Test split: jobs.evaluate's numbers, or how to get them."""
    chosen = {r["variant"]: r["config_id"] for _, r in by_variant.iterrows()}
    chosen.update({r[METHOD]: r["config_id"] for _, r in by_method.iterrows()})
    return ["", "## Test split", ""] + test_lines(test, test_per_label, table, chosen, metric=metric,
                                                  results=results, intervals=intervals)  # fmt: skip


def comparisons_section(comparisons: pd.DataFrame | None, *, margin: float) -> list[str]:
    """## Paired comparisons: every row of comparisons.csv."""
    if comparisons is None or comparisons.empty:
        return []
    lines = ["", "## Paired comparisons", ""]
    lines.append(
        f"Every comparison in `comparisons.csv`: difference A - B with its 95% paired bootstrap interval "
        f"(the same resampled images for both sides, seeds resampled within each), P(A better), and the "
        f"verdict (equivalent when the 90% interval lies within ±{margin:g})."
    )
    return lines + ["", _md(_comparison_rows(comparisons))]


def configurations_section(configs: pd.DataFrame, *, metric: str) -> list[str]:
    """## All configurations that have results."""
    lines = ["", "## All configurations (validation, mean over seeds [interval])", ""]
    return lines + [_md(_config_rows(configs[configs["n_seeds"] > 0], metric=metric))]


def missing_section(table: pd.DataFrame, configs: pd.DataFrame) -> list[str]:
    """## Missing, failed or unfinished trials and configurations."""
    lines = ["", "## Missing, failed or unfinished", ""]
    missing = missing_lines(table, configs)
    return lines + (missing or ["None: every trial finished and every configuration has all its seeds."])


def diagrams_section(diagrams: dict[str, str] | None) -> list[str]:
    """## Diagrams: each file and what it shows (or why it was not drawn)."""
    if not diagrams:
        return []
    return ["", "## Diagrams", ""] + [f"- `{f}`: {d}" for f, d in diagrams.items()]


def summary_markdown(
    table: pd.DataFrame,
    *,
    metric: str,
    mode: str,
    baseline: dict | None,
    name: str,
    configs: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    test_per_label: pd.DataFrame | None = None,
    results: str | None = None,
    diagrams: dict[str, str] | None = None,
    comparisons: pd.DataFrame | None = None,
    test_intervals: dict | None = None,
    planned: dict | None = None,
    margin: float = 0.02,
    sparse: Sequence[str] = (),
    n_boot: int = 0,
    epochs: pd.DataFrame | None = None,
    metric_source: str = "",
    scale: Scale | None = None,
) -> str:
    """summary.md: verdict sentences computed from the data, the across-scale comparison (a sweep over two or more
    models), the protocol, best configuration per method and per preset with 95% intervals over seeds, the constant baseline, cost, learning rates, per-label F1, the
    test split (if evaluated), every configuration, what is missing, and the diagrams.

    Args:
        table: :func:`trials_table`. configs: :func:`configs_table` (computed when None).
        baseline: :func:`constant_baseline` or None. test, test_per_label: jobs.evaluate's CSVs, or None.
        results: the results path shown in commands. diagrams: ``{file: description}`` of the figures.
        comparisons: :mod:`cxr_core.comparison`'s paired comparisons (None: seed-level sentences only).
        test_intervals: ``{group: {metric: interval dict}}`` on test from per-image records.
        planned: cost of each method's best configuration at the study's target scale (dry-run plan;
            :func:`cxr_core.study_report.planned_cost`).
        margin: the equivalence margin of the verdicts. sparse: labels with few positives on validation.
        n_boot: bootstrap resamples behind the intervals. epochs: the tidy per-epoch rows with ``config_id``
            (for the convergence check of the best configurations).
        metric_source: where ``metric`` came from (``the sweep's own``, ``--metric``), said in the summary.
        scale: the across-model analysis (:func:`cxr_core.analysis.scale.across_scales`, with the paired intervals
            of the validation records); None: computed here from ``configs`` (seed-level intervals). A sweep with
            one model has none, and no such section.
    """
    configs = configs_table(table) if configs is None else configs
    if "config_id" not in table:
        table = with_config_ids(table, configs)
    kinds = table.get("peak_mem_kind", pd.Series(dtype=object)).dropna().unique()
    kind = ", ".join(map(str, kinds))
    by_method = (
        best_config_per(configs, METHOD, metric=metric, mode=mode) if METHOD in configs else configs.iloc[0:0]
    )
    by_variant = best_config_per(configs, "variant", metric=metric, mode=mode)
    best_of = {r[METHOD]: r for _, r in by_method.iterrows()}  # method -> its best configuration

    lines = header_section(table, configs, metric=metric, mode=mode, name=name, kind=kind, comparisons=comparisons,
                           margin=margin, n_boot=n_boot, metric_source=metric_source)  # fmt: skip
    lines += verdict_section(configs, by_variant, best_of, metric=metric, mode=mode, kind=kind, baseline=baseline,
                             comparisons=comparisons, test=test, planned=planned, sparse=sparse)  # fmt: skip
    scale = across_scales(configs, metric=metric, mode=mode) if scale is None else scale
    lines += scale_section(scale, metric=metric)
    lines += protocol_section(table, configs, metric=metric, mode=mode, epochs=epochs)
    lines += best_sections(by_method, by_variant, metric=metric)
    lines += baseline_section(baseline, by_method, metric=metric, mode=mode)
    lines += cost_section(by_variant, kind=kind)
    lines += lr_section(configs, metric=metric, mode=mode)
    lines += per_label_section(best_of)
    lines += test_section(test, test_per_label, table, by_method, by_variant, metric=metric, results=results or name,
                          intervals=test_intervals)  # fmt: skip
    lines += comparisons_section(comparisons, margin=margin)
    lines += configurations_section(configs, metric=metric)
    lines += missing_section(table, configs)
    lines += diagrams_section(diagrams)
    return "\n".join(lines) + "\n"
