"""The study's comparisons on per-image records: intervals and paired verdicts over seeds and images.

Every configuration is scored on the same images, so it is compared with another on those images: the
trials' per-image records (:mod:`cxr_core.records`) at their best validation epoch, and ``jobs.evaluate``'s
test records, go through :mod:`cxr_core.bootstrap` (two-level bootstrap: seeds within each side, then the
same resampled images for both sides). This module only gathers the records and decides what to compare:

- intervals for every configuration on validation (replacing the seed-only t interval), and for every
  group evaluated on test;
- comparisons, one row each in ``comparisons.csv``: each method's best configuration vs the best FFT one
  (``lora_vs_fft``: FFT is the reference, :mod:`cxr_core.methods`), the other methods' bests among themselves
  (``ia3_vs_lora``: the later-registered method first), the best of each preset vs the best FFT
  (``preset_vs_fft``), every configuration of another method vs the best FFT (``config_vs_fft``, the forest
  diagram), each method's presets' bests pairwise (``preset_vs_preset``) and a method's own ablations (within its
  best preset, LoRA's ranks pairwise: ``rank_vs_rank``); on validation and, for the groups ``jobs.evaluate``
  scored, on test.

Selection stays on validation; the test split is only read from ``jobs.evaluate``'s records.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core import bootstrap
from cxr_core import methods as registry
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.records import (
    RECORDS_DIR,
    ImageRecords,
    align,
    load_records,
    records_name,
    reference_labels,
    take,
)

COLUMNS = ("kind", "a", "b", "a_variant", "b_variant", "split", "metric", "difference", "lo", "hi",
           "p_a_better", "verdict", "margin", "n_images", "n_seeds_a", "n_seeds_b", "settle_images",
           "settle_seeds", "sentence")  # fmt: skip
PRESET_VS_REFERENCE = f"preset_vs_{registry.reference().name}"  # preset_vs_fft
CONFIG_VS_REFERENCE = f"config_vs_{registry.reference().name}"  # config_vs_fft: the forest diagram's rows
PRESET_VS_PRESET = "preset_vs_preset"
BOOTSTRAPPED = ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "label_precision_micro",
                "label_recall_micro", "unparsed_rate", *(f"f1/{label}" for label in LABELS))  # fmt: skip


def _open(path: str):
    """(pyarrow filesystem or None, path) for a local path or a storage URI."""
    if "://" not in path:
        return None, path
    from cxr_core.tune_runner import storage_filesystem

    return storage_filesystem(path)


def trial_records(table: pd.DataFrame) -> dict[str, ImageRecords]:
    """{trial_id: validation records at the trial's best epoch} for every trial that wrote them."""
    out: dict[str, ImageRecords] = {}
    if "trial_path" not in table or "best_epoch" not in table:
        return out
    for _, row in table.dropna(subset=["trial_path", "best_epoch"]).iterrows():
        if row.get("status") == "ERROR":
            continue
        fs, base = _open(str(row["trial_path"]))
        path = f"{base.rstrip('/')}/{RECORDS_DIR}/{records_name('val', int(row['best_epoch']))}"
        try:
            out[str(row["trial_id"])] = load_records(path, filesystem=fs)
        except (OSError, FileNotFoundError, CxrError):
            continue  # an older sweep, or a trial that stopped before writing: seed-level statistics only
    return out


class Split:
    """Every configuration's records on one split, aligned on the images all of them scored, with one shared
    :class:`bootstrap.Resampler` (which is what makes every comparison on this split paired)."""

    def __init__(
        self,
        name: str,
        truth: np.ndarray,
        groups: dict[str, list[ImageRecords]],
        *,
        uncertain: str,
        n_boot: int,
        seed: int,
    ):
        rows = align([rec for recs in groups.values() for rec in recs])
        if len(rows) and rows.max() >= len(truth):
            raise CxrError(
                f"{name} records name row {int(rows.max())} but the split CSV has {len(truth)} rows: the "
                "split folder changed after the sweep; analyse with the split it was run on"
            )
        self.name = name
        self.truth = truth[rows]
        self.uncertain = uncertain
        self.resampler = bootstrap.Resampler(len(rows), n_boot=n_boot, seed=seed)
        self.seeds = {key: _seed_records([take(r, rows) for r in recs]) for key, recs in groups.items()}
        self._streams = {key: i + 1 for i, key in enumerate(groups)}

    def interval(self, key: str, metric: str) -> dict:
        return bootstrap.interval(self.truth, self.seeds[key], metric=metric, uncertain=self.uncertain,
                                  resampler=self.resampler, stream=self._streams[key])  # fmt: skip

    def resampled(self, key: str, metric: str) -> np.ndarray:
        """(n_boot,) the two-level statistic of one configuration on this split's shared image resamples (its
        seed draws are those of :meth:`interval`): ratios of configurations taken resample by resample are
        paired over the images."""
        return bootstrap.resampled(self.truth, self.seeds[key], metric=metric, uncertain=self.uncertain,
                                   resampler=self.resampler, stream=self._streams[key])  # fmt: skip

    def compare(self, a: str, b: str, metric: str, *, margin: float) -> dict:
        streams = (self._streams[a], self._streams[b] + len(self._streams))
        return bootstrap.compare(self.truth, self.seeds[a], self.seeds[b], metric=metric, margin=margin,
                                 uncertain=self.uncertain, resampler=self.resampler, streams=streams)  # fmt: skip

    def sparse(self, *, min_positives: int = 10) -> list[str]:
        return bootstrap.sparse_labels(self.truth, uncertain=self.uncertain, min_positives=min_positives)


def _seed_records(recs: Sequence[ImageRecords]) -> bootstrap.SeedRecords:
    return bootstrap.SeedRecords(
        pred=np.stack([r.pred for r in recs]),
        loss_sum=np.stack([r.loss_sum for r in recs]),
        tokens=np.stack([r.tokens for r in recs]),
        unparsed=np.stack([r.unparsed for r in recs]),
        sentences=np.stack([r.sentences for r in recs]),
    )


def validation_split(
    configs: pd.DataFrame, records: dict[str, ImageRecords], *, split_dir: str, uncertain: str, n_boot: int,
    seed: int = 0,
) -> Split | None:  # fmt: skip
    """The validation :class:`Split` of every configuration with records, from those of its trials that wrote
    them (an older or errored trial without records leaves that seed out); None if no trial has records."""
    groups = {}
    for _, row in configs.iterrows():
        ids = [t for t in str(row["trial_ids"]).split(",") if t in records]
        if ids:
            groups[row["config_id"]] = [records[t] for t in ids]
    if not groups:
        return None
    return Split("validation", reference_labels(split_dir, "val"), groups, uncertain=uncertain, n_boot=n_boot,
                 seed=seed)  # fmt: skip


def test_split(
    test: pd.DataFrame, folder: Path, *, split_dir: str, uncertain: str, n_boot: int, seed: int = 0
) -> Split | None:
    """The test :class:`Split` of every configuration ``jobs.evaluate`` scored (records in
    ``folder/test_records``), keyed by configuration id (a configuration evaluated for two groups, e.g. ``lora``
    and ``lora:text``, appears once)."""
    groups: dict[str, list[ImageRecords]] = {}
    for config_id, rows in test.groupby("config_id", sort=False):
        paths = [
            Path(folder) / "test_records" / f"{t}.npz" for t in dict.fromkeys(rows["trial_id"].astype(str))
        ]
        if paths and all(p.is_file() for p in paths):
            groups[str(config_id)] = [load_records(str(p)) for p in paths]
    if not groups:
        return None
    return Split("test", reference_labels(split_dir, "test"), groups, uncertain=uncertain, n_boot=n_boot,
                 seed=seed)  # fmt: skip


def with_bootstrap_intervals(configs: pd.DataFrame, split: Split | None) -> pd.DataFrame:
    """``configs`` with ``best_<M>_lo/_hi`` replaced by the two-level bootstrap interval for every metric M of
    :data:`BOOTSTRAPPED` of every configuration with records, and ``interval`` set to ``bootstrap`` there."""
    if split is None:
        return configs
    configs = configs.copy()
    for i, row in configs.iterrows():
        if row["config_id"] not in split.seeds:
            continue
        for metric in BOOTSTRAPPED:
            if f"best_{metric}_mean" not in configs:
                continue
            iv = split.interval(row["config_id"], metric)
            configs.loc[i, [f"best_{metric}_lo", f"best_{metric}_hi"]] = [iv["lo"], iv["hi"]]
        configs.loc[i, "interval"] = "bootstrap"
    return configs


def _row(kind: str, a: str, b: str, variants: dict, split: Split, metric: str, margin: float) -> dict:
    res = split.compare(a, b, metric, margin=margin)
    settle = res.get("settle") or {}
    return {
        "kind": kind, "a": a, "b": b, "a_variant": variants.get(a, a.split(" ")[0]),
        "b_variant": variants.get(b, b.split(" ")[0]),
        "split": "val" if split.name == "validation" else split.name, "metric": metric,
        "difference": res["difference"], "lo": res["lo"], "hi": res["hi"], "p_a_better": res["p_a_better"],
        "verdict": res["verdict"], "margin": margin, "n_images": res["n_images"], "n_seeds_a": res["n_seeds_a"],
        "n_seeds_b": res["n_seeds_b"], "settle_images": settle.get("images"), "settle_seeds": settle.get("seeds"),
        "sentence": bootstrap.verdict_sentence(_name(a), _name(b), res, metric=metric, split=split.name),
    }  # fmt: skip


def _name(config_id: str) -> str:
    """``lora:all_linear r=16 a=32 lr=0.005`` -> ``LoRA all_linear r=16 a=32 lr=0.005``; test groups too."""
    return registry.display(config_id)


def method_kinds(present: Sequence[str] | None = None) -> list[str]:
    """The kinds of the method-vs-method comparisons (``lora_vs_fft``, ``ia3_vs_fft``, ``ia3_vs_lora``) among
    the methods ``present`` (default: every registered one)."""
    return [
        registry.kind(a, b) for a, b in registry.pairs(present if present is not None else registry.names())
    ]


def reference_kinds() -> list[str]:
    """The kinds that compare each method's best with the reference's (``lora_vs_fft``, ``ia3_vs_fft``)."""
    return [registry.kind(m, registry.reference()) for m in registry.compared()]


def ablation_kinds() -> list[str]:
    """Every method's own ablation kinds (``rank_vs_rank``)."""
    return list(dict.fromkeys(k for m in registry.registered() for k in m.ablations))


def validation_comparisons(
    configs: pd.DataFrame, split: Split | None, *, metric: str, mode: str, margin: float,
    extra_metrics: Sequence[str] = (),
) -> list[dict]:  # fmt: skip
    """The validation comparisons (see the module docstring) among configurations that have records."""
    from cxr_core.analysis import METHOD, best_config_per

    if split is None or METHOD not in configs:
        return []
    have = configs[configs["config_id"].isin(set(split.seeds))]
    variants = dict(zip(have["config_id"], have["variant"], strict=True))
    ref = registry.reference()
    if have[have[METHOD] == ref.name].empty:
        return []
    rows_of = {m.name: have[have[METHOD] == m.name] for m in registry.registered()}
    best = {
        name: best_config_per(rows, METHOD, metric=metric, mode=mode).iloc[0]
        for name, rows in rows_of.items()
        if not rows.empty
    }
    f = best[ref.name]["config_id"]
    metrics = (metric, *[x for x in extra_metrics if x != metric])
    rows = []
    for a, b in registry.pairs(list(best)):  # each method's best vs FFT's, then the others among themselves
        for m in metrics:
            rows.append(_row(registry.kind(a, b), best[a.name]["config_id"], best[b.name]["config_id"], variants,
                             split, m, margin))  # fmt: skip
    presets = {}
    for method in registry.compared():
        if method.name in best and method.variant_key:
            mine = best_config_per(rows_of[method.name], "variant", metric=metric, mode=mode)
            presets[method] = mine.sort_values(f"best_{metric}_mean", ascending=(mode == "min"))
    for p in (p for mine in presets.values() for _, p in mine.iterrows()):
        rows.append(_row(PRESET_VS_REFERENCE, p["config_id"], f, variants, split, metric, margin))
    for method in registry.compared():
        for _, c in rows_of[method.name].iterrows():
            rows.append(_row(CONFIG_VS_REFERENCE, c["config_id"], f, variants, split, metric, margin))
    for mine in presets.values():
        for (_, p), (_, q) in itertools.combinations(list(mine.iterrows()), 2):
            rows.append(_row(PRESET_VS_PRESET, p["config_id"], q["config_id"], variants, split, metric, margin))
    for method in registry.compared():
        if method.name not in best:
            continue
        mine = rows_of[method.name]
        top = mine[mine["variant"] == best[method.name]["variant"]]
        for kind, key in method.ablations.items():  # within the best preset, each value of the key pairwise
            col = method.column(key)
            if col in top and top[col].nunique() > 1:
                by_value = best_config_per(top, col, metric=metric, mode=mode).sort_values(col)
                for (_, p), (_, q) in itertools.combinations(list(by_value.iterrows()), 2):
                    rows.append(_row(kind, q["config_id"], p["config_id"], variants, split, metric, margin))
    return rows


def test_comparisons(
    split: Split | None, test: pd.DataFrame, *, best: dict[str, str], metric: str, margin: float,
    extra_metrics: Sequence[str] = (),
) -> list[dict]:  # fmt: skip
    """The configurations jobs.evaluate scored, compared on test: each method's best (on validation; ``best``:
    ``{method: config_id}``) vs FFT's and the other methods' bests among themselves (``lora_vs_fft``,
    ``ia3_vs_lora``), and every other preset's best vs FFT's (``preset_vs_fft``)."""
    if split is None:
        return []
    ref = registry.reference().name
    evaluated = {str(c) for c in test["config_id"]} & set(split.seeds)
    pairs = list(zip(test["group"].astype(str), test["config_id"].astype(str), strict=True))
    # A method's configuration on test is the one evaluated for the method's group (jobs.evaluate --by method);
    # evaluated per preset (--by variant), it is the method's best on validation.
    best = {m: c for m, c in best.items() if c in evaluated}
    best.update({g: c for g, c in pairs if registry.find(g) is not None and c in evaluated})
    if ref not in best:
        return []
    presets = {c: g for g, c in pairs if registry.find(g) is None}  # a preset's group names its variant
    variants = {c: presets.get(c, c.split(" ")[0]) for c in evaluated}
    metrics = (metric, *[x for x in extra_metrics if x != metric])
    rows = []
    for a, b in registry.pairs(list(best)):
        for m in metrics:
            rows.append(_row(registry.kind(a, b), best[a.name], best[b.name], variants, split, m, margin))
    for config_id in split.seeds:
        if config_id not in best.values():
            rows.append(_row(PRESET_VS_REFERENCE, config_id, best[ref], variants, split, metric, margin))
    return rows


def comparisons_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))
