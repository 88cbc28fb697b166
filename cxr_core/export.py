"""After the sweep: the chosen checkpoint as a self-contained Hugging Face folder, with a model card.

The checkpoint is chosen as ``jobs.evaluate`` chooses (on validation only): the best configuration by its
mean over seeds of the sweep's metric (overall, of one method with ``method``, or the one named with
``config_id``), then that configuration's seed with the best validation value, at that trial's best epoch.

An export loads with nothing but transformers and peft, offline, from any working directory:

- a full model (FFT, or an adapter merged into its base with ``merge``): ``config.json``,
  ``generation_config.json`` (its ``max_new_tokens`` is the sweep's) and ``model.safetensors``, a plain
  ``GitForCausalLM``: ``AutoModelForCausalLM.from_pretrained(folder)``;
- an adapter (LoRA): ``adapter_config.json`` and ``adapter_model.safetensors``; its
  ``base_model_name_or_path`` is the base's hub id as the sweep named it, or, for the embedded model or any
  local folder, ``base``: a copy of the base inside the export (``folder/base``), a path relative to the
  export folder. peft resolves that reference against the working directory, so load the base yourself:
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), folder)``;
- always the processor (image processor + tokenizer; ``AutoProcessor.from_pretrained(folder)``), a model card
  ``README.md`` with Hugging Face's metadata header, and ``cxr_export.json``: where the model came from and the
  settings its evaluation used (generation length, uncertain policy, precision, image policy), which
  ``jobs.predict`` reads.

Whether a checkpoint is an adapter, and how it reloads, is asked of :func:`load_chosen` only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_core import analysis, methods
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS

EXPORT_INFO = "cxr_export.json"
BASE_DIR = "base"  # the local base model's copy inside an adapter export
CARD_METRICS = ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "bleu4", "exact_match", "unparsed_rate")
N_BOOT = 1000  # as jobs.analyze: the card's intervals are the report's
FULL, ADAPTER, MERGED = "full", "adapter", "merged"


@dataclass
class Choice:
    """The checkpoint chosen for export, and the sweep's tables it was chosen from.

    Attributes:
        results: the sweep's folder.
        metric, mode, metric_source: the validation objective and where it came from.
        config_id, method: the chosen configuration and its method (``fft``, ``lora``).
        how: how the configuration was chosen, a phrase for the card.
        trial_id, seed, epoch: the chosen trial (the configuration's best seed) and its best epoch.
        checkpoint: the checkpoint folder (``model/``, ``trial_state.json``).
        arm: the trial's config (the arm dict of the search space, resolved).
        value: the trial's validation ``metric`` at that epoch.
        reported: everything the trial reported at that epoch (its validation metrics, its cost so far).
        epochs, table, configs: the sweep's epochs, trials and configurations tables.
    """

    results: str
    metric: str
    mode: str
    metric_source: str
    config_id: str
    method: str
    how: str
    trial_id: str
    seed: int
    epoch: int
    checkpoint: Path
    arm: dict
    value: float
    reported: dict
    epochs: pd.DataFrame
    table: pd.DataFrame
    configs: pd.DataFrame


def _method_name(name: str) -> str:
    """``full fine-tuning (FFT)``, ``LoRA``: the method as the model card names it."""
    method = methods.find(name)
    if method is None:
        return name
    return method.long_title if method.long_title == method.title else f"{method.long_title} ({method.title})"


def _one_of(values) -> str:
    return ", ".join(repr(str(v)) for v in dict.fromkeys(values))


def choose_checkpoint(
    results: str | Path,
    *,
    method: str | None = None,
    config_id: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
    grid=None,
) -> Choice:
    """The checkpoint to export from ``results`` (see the module docstring for the rule).

    Args:
        results: a sweep's local results folder.
        method: a method (``fft``, ``lora``) or a variant (``lora:text``): its best configuration.
        config_id: a configuration id of the report's ``configs.csv`` (``fft lr=0.001``).
        metric, mode: the validation objective; None = the sweep's own.
        grid: the sweep's ResultGrid if the caller has restored it already (:func:`load_results`).

    Raises:
        CxrError: a storage URI, no results, an unknown metric, method or configuration, or no checkpoint
            folder of the chosen configuration on disk.
    """
    from cxr_core.tune_runner import best_checkpoints, load_results, resolve_objective, results_frame

    results = str(results)
    if "://" in results:
        raise CxrError(
            f"jobs.export reads checkpoints from a local results folder, not {results}; copy the sweep's folder "
            "here first (e.g. `aws s3 sync` or `gsutil rsync`), then pass the local folder"
        )
    grid = load_results(results) if grid is None else grid
    metric, mode, source = resolve_objective(grid, metric, mode)
    epochs = results_frame(results, grid=grid)
    if "epoch" not in epochs:
        raise CxrError(f"{results}: no trial has reported an epoch yet, so nothing has a checkpoint; wait for the "
                       "sweep's first epoch (or resume it), then export")  # fmt: skip
    if metric not in epochs:
        known = sorted(c for c in epochs.columns if not c.startswith("config/")
                       and pd.api.types.is_numeric_dtype(epochs[c]))  # fmt: skip
        raise CxrError(f"metric {metric!r} is not in the results of {results}; pass --metric one of: "
                       + ", ".join(known))  # fmt: skip
    table = analysis.trials_table(epochs, metric=metric, mode=mode)
    configs = analysis.configs_table(table)
    table = analysis.with_config_ids(table, configs)
    epochs = analysis.with_config_ids(epochs, configs)
    if config_id is not None:
        if config_id not in set(configs["config_id"]):
            raise CxrError(f"{results} has no configuration {config_id!r}; pass --config-id one of: "
                           f"{_one_of(configs['config_id'])} (the config_id column of report/configs.csv)")  # fmt: skip
        how = "named with --config-id"
    else:
        pool = configs
        if method is not None:
            pool = configs[(configs[analysis.METHOD] == method) | (configs["variant"] == method)]
            if pool.empty:
                raise CxrError(f"{results} has no configuration of method {method!r}; pass --method one of: "
                               f"{_one_of([*configs[analysis.METHOD], *configs['variant']])}")  # fmt: skip
        best = analysis.best_config_per(pool.assign(pool="all"), "pool", metric=metric, mode=mode)
        if best.empty:
            raise CxrError(
                f"{results}: no trial has reported {metric!r} yet; wait for a first epoch, then export"
            )
        config_id = str(best["config_id"].iloc[0])
        of = f" of {method}" if method else ""
        among = (
            f"the best of {len(pool)} configurations{of}" if len(pool) > 1 else f"the only configuration{of}"
        )
        how = f"{among}, by the mean over its seeds of each seed's best validation {metric}"
    picks = best_checkpoints(results, metric=metric, mode=mode, grid=grid, config_id=config_id)
    present = [p for p in picks if (Path(p["checkpoint_path"]) / "model").is_dir()]
    if not present:
        missing = f" ({picks[0]['checkpoint_path']} is not there)" if picks else ""
        raise CxrError(
            f"{results} holds no checkpoint of configuration {config_id!r}{missing}: none was saved, or the "
            "sweep's checkpoint_* folders were deleted or not copied with the results; copy the whole results "
            "folder, checkpoints included, or export another configuration with --config-id"
        )
    sign = -1.0 if mode == "max" else 1.0
    pick = min(present, key=lambda p: (sign * p[f"val_{metric}"], p["seed"]))  # best value, then lowest seed
    checkpoint = Path(pick["checkpoint_path"])
    epoch = int(json.loads((checkpoint / "trial_state.json").read_text())["epoch"])
    mine = epochs[(epochs["trial_id"].astype(str) == str(pick["trial_id"])) & (epochs["epoch"] == epoch)]
    reported = mine.iloc[-1].to_dict() if not mine.empty else {}
    value = float(reported.get(metric, pick[f"val_{metric}"]))
    return Choice(results=results, metric=metric, mode=mode, metric_source=source, config_id=config_id,
                  method=str(pick["config"].get("method", methods.reference().name)), how=how, trial_id=str(pick["trial_id"]),
                  seed=int(pick["seed"]), epoch=epoch, checkpoint=checkpoint, arm=pick["config"], value=value,
                  reported=reported, epochs=epochs, table=table, configs=configs)  # fmt: skip


def load_chosen(arm: dict, checkpoint: Path):
    """The checkpoint's model, and whether it is an adapter (a peft model over a base) or a full model.

    The one place an export asks how a checkpoint reloads: :func:`cxr_core.trial.load_checkpoint_model`.
    """
    from peft import PeftModel

    from cxr_core.config import trial_config
    from cxr_core.trial import load_checkpoint_model

    model = load_checkpoint_model(trial_config(arm), checkpoint)
    return model.eval(), isinstance(model, PeftModel)


def is_hub_id(name: str) -> bool:
    """Whether a sweep's ``model`` names a hub model (``microsoft/git-base``) rather than a local folder."""
    from cxr_core.model import EMBEDDED

    if name == EMBEDDED or name.startswith(("arch:", ".", "/", "~")) or Path(name).exists():
        return False
    return name.count("/") <= 1


def save_processor(processor, folder: Path) -> None:
    """The processor's files, plus the classic per-component ones (``preprocessor_config.json``, ``vocab.txt``)
    for loaders that look for them, as the embedded model's folder has them."""
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    vocab = getattr(processor.tokenizer, "get_vocab", None)
    if vocab is not None and not (folder / "vocab.txt").exists():
        tokens = sorted(vocab().items(), key=lambda item: item[1])
        (folder / "vocab.txt").write_text("".join(token + "\n" for token, _ in tokens))


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def export_checkpoint(choice: Choice, out: str | Path, *, merge: bool = False) -> dict:
    """Write the chosen checkpoint into the new folder ``out`` (see the module docstring).

    The folder is written under a temporary name beside ``out`` and renamed into place when complete.

    Returns:
        What ``cxr_export.json`` holds (``format`` is ``full``, ``adapter`` or ``merged``).

    Raises:
        CxrError: ``out`` exists and is not empty, or the adapter cannot be merged.
    """
    from cxr_core.config import trial_config
    from cxr_core.model import load_model, load_processor

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CxrError(f"--out {out} exists and is not empty; pass a new folder (an export never overwrites)")
    cfg = trial_config(choice.arm)
    model, adapter = load_chosen(choice.arm, choice.checkpoint)
    processor = load_processor(cfg.model)
    fmt = ADAPTER if adapter else FULL
    if adapter and merge:
        try:
            model = model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError) as exc:
            raise CxrError(f"the {choice.method} adapter of {choice.config_id!r} cannot be merged into its base "
                           f"({exc}); export it without --merge") from None  # fmt: skip
        fmt = MERGED
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        base_ref = None
        if fmt == ADAPTER:
            model.save_pretrained(tmp)
            base_ref = cfg.model if is_hub_id(cfg.model) else BASE_DIR
            if base_ref == BASE_DIR:
                base = load_model(cfg.model)
                base.generation_config.max_new_tokens = cfg.evaluation.max_new_tokens
                base.save_pretrained(tmp / BASE_DIR)
                save_processor(processor, tmp / BASE_DIR)
            adapter_config = json.loads((tmp / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = base_ref
            (tmp / "adapter_config.json").write_text(
                json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
            )
        else:
            model.generation_config.max_new_tokens = cfg.evaluation.max_new_tokens
            model.save_pretrained(tmp)
        save_processor(processor, tmp)
        info = export_info(choice, fmt=fmt, base_ref=base_ref)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(choice, info, size_mb=_folder_mb(tmp)))
        for path in tmp.rglob("*"):  # some writers create files private (0600): an export is for sharing
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def export_info(choice: Choice, *, fmt: str, base_ref: str | None) -> dict:
    """What ``cxr_export.json`` holds: the source, the format and the settings the sweep evaluated with."""
    from cxr_core.config import to_dict, trial_config

    cfg = trial_config(choice.arm)
    return {
        "created_by": "jobs.export",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": fmt,
        "base_model": {"sweep": cfg.model, "reference": base_ref},
        "source": {
            "results": str(Path(choice.results).resolve()),
            "config_id": choice.config_id,
            "method": choice.method,
            "chosen": choice.how,
            "trial_id": choice.trial_id,
            "seed": choice.seed,
            "epoch": choice.epoch,
            "checkpoint": str(choice.checkpoint),
            "metric": choice.metric,
            "mode": choice.mode,
            f"val_{choice.metric}": choice.value,
        },
        "generation": {
            "max_new_tokens": cfg.evaluation.max_new_tokens,
            "batch_size": cfg.evaluation.batch_size,
            "precision": cfg.train.precision,
        },
        "labels": {"names": list(LABELS), "uncertain_policy": cfg.evaluation.uncertain},
        "image_policy": cfg.data.image_policy,
        "config": to_dict(cfg),
    }


# ------------------------------------------------------------------------------------------------ model card


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _interval(lo, hi) -> str:
    if any(v is None or not math.isfinite(float(v)) for v in (lo, hi)):
        return ""
    return f" [{_num(lo)}, {_num(hi)}]"


def _seed_interval(kind: str, n: int) -> str:
    """The name of a seed-level interval as :func:`cxr_core.analysis.honest_interval` makes it."""
    if kind == "bootstrap":
        return "bootstrap"
    return "t" if n >= analysis.MIN_SEEDS_FOR_T else ("min-max" if n == 2 else "")


def _validation(choice: Choice) -> list[dict]:
    """Rows (metric, this checkpoint's value, the configuration's mean over seeds, interval and its kind): the
    two-level bootstrap of jobs.analyze for the label metrics where the trials wrote per-image records, else the
    seed-level interval of :func:`cxr_core.analysis.configs_table`."""
    from cxr_core import comparison

    configs = choice.configs
    split_dir = str(choice.arm.get("data", {}).get("split_dir", ""))
    uncertain = choice.arm.get("evaluation", {}).get("uncertain", "negative")
    try:
        split = comparison.validation_split(configs, comparison.trial_records(choice.table), split_dir=split_dir,
                                            uncertain=uncertain, n_boot=N_BOOT)  # fmt: skip
        configs = comparison.with_bootstrap_intervals(configs, split)
    except (CxrError, OSError):
        pass  # records missing or unreadable: the seed-level intervals stay
    row = configs[configs["config_id"] == choice.config_id].iloc[0]
    n = int(row["n_seeds"])
    rows = []
    for m in dict.fromkeys((choice.metric, *CARD_METRICS, "val_loss")):
        if f"best_{m}_mean" not in row:
            continue
        boot = row["interval"] == "bootstrap" and m in comparison.BOOTSTRAPPED
        value = float(choice.reported.get(m, math.nan))
        rows.append({"metric": m, "value": value, "mean": float(row[f"best_{m}_mean"]),
                     "lo": row.get(f"best_{m}_lo"), "hi": row.get(f"best_{m}_hi"), "n": n,
                     "interval": _seed_interval("bootstrap" if boot else "", n)})  # fmt: skip
    return rows


def _test(choice: Choice) -> tuple[list[dict], bool] | None:
    """Rows like :func:`_validation`'s from jobs.evaluate's files in ``RESULTS/report`` (the bootstrap from its
    per-image test records, as the sweep's summary.md has them), and whether jobs.evaluate scored this very
    checkpoint; None if this configuration was not evaluated there."""
    from cxr_core import comparison

    report = Path(choice.results) / "report"
    if not (report / "test_metrics.csv").is_file():
        return None
    test = pd.read_csv(report / "test_metrics.csv").drop_duplicates("trial_id")
    mine = test[test["config_id"].astype(str) == choice.config_id]
    if mine.empty:
        return None
    split_dir = str(choice.arm.get("data", {}).get("split_dir", ""))
    uncertain = choice.arm.get("evaluation", {}).get("uncertain", "negative")
    try:
        split = comparison.test_split(test, report, split_dir=split_dir, uncertain=uncertain, n_boot=N_BOOT)
    except (CxrError, OSError):
        split = None
    this = mine[mine["trial_id"].astype(str) == choice.trial_id]
    same = not this.empty and Path(str(this["checkpoint"].iloc[0])).name == choice.checkpoint.name
    rows = []
    for m in dict.fromkeys((choice.metric, *CARD_METRICS, "test_loss")):
        if m not in mine:
            continue
        s = analysis.honest_interval(m, analysis.mean_interval(mine[m]))
        entry = {"metric": m, "value": float(this[m].iloc[0]) if same else math.nan, "mean": s["mean"],
                 "lo": s["lo"], "hi": s["hi"], "n": len(mine), "interval": _seed_interval("", len(mine))}  # fmt: skip
        if split is not None and choice.config_id in split.seeds and m in comparison.BOOTSTRAPPED:
            iv = split.interval(choice.config_id, m)
            entry.update(mean=iv["mean"], lo=iv["lo"], hi=iv["hi"], interval="bootstrap")
        rows.append(entry)
    return rows, same


INTERVALS = (
    "Intervals: `bootstrap` = 95% percentile interval of a two-level bootstrap (1,000 resamples: the seeds, then "
    "the images of the split; over images alone with one seed), as the sweep's summary.md has them; `t` = 95% t "
    "interval over three or more seeds; `min-max` = the range over two seeds; none with one seed."
)


def _metric_table(rows: list[dict], own: str) -> list[str]:
    lines = [f"| metric | {own} | configuration: mean over seeds [interval] | interval | seeds |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['metric']} | {_num(r['value'])} | {_num(r['mean'])}{_interval(r['lo'], r['hi'])} "
                     f"| {r['interval']} | {r['n']} |")  # fmt: skip
    return lines


def _flat(prefix: str, node, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = ",".join(map(str, node)) if isinstance(node, (list, tuple)) else node


def _epoch_note(choice: Choice) -> list[str]:
    """A line when the checkpoint Tune kept is not the epoch the report counts as the trial's best."""
    trial = choice.table[choice.table["trial_id"].astype(str) == choice.trial_id]
    best = trial["best_epoch"].iloc[0] if "best_epoch" in trial and not trial.empty else None
    if best is None or analysis._isnan(best) or int(best) == choice.epoch:
        return []
    return [
        f"- The sweep's report counts this seed at epoch {int(best)} (the first epoch with its best value); Tune "
        f"keeps the best-scoring checkpoints (ties to the later one, `keep_checkpoints` of them), here epoch "
        f"{choice.epoch}'s. The validation table below shows this checkpoint's own numbers."
    ]


def _data_lines(choice: Choice, cfg) -> list[str]:
    """The data and the split protocol, from the split folder's manifest.json when it has one."""
    split_dir = Path(cfg.data.split_dir)
    lines = [
        f"- Split folder: `{split_dir}` (the seed study's CSV format); images under `{cfg.data.image_root}`."
    ]
    counts = {}
    for split in ("train", "val", "test"):
        path = split_dir / f"{split}_split.csv"
        if path.is_file():
            counts[split] = sum(1 for _ in path.open()) - 1
    if counts:
        lines.append("- Rows per split: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ".")
    limits = [f"{name} {n:,}" for name, n in (("train", cfg.data.max_train), ("val", cfg.data.max_val)) if n]
    if limits:
        lines.append(f"- The sweep used only the first rows: {', '.join(limits)}.")
    manifest = split_dir / "manifest.json"
    try:
        settings = json.loads(manifest.read_text()).get("settings", {}) if manifest.is_file() else {}
    except (OSError, ValueError):
        settings = {}
    if settings:
        by = settings.get("split_by", "?")
        who = (
            "no patient is in two splits"
            if by == "patient"
            else "images split independently (a patient can be in two splits)"
        )
        lines.append(
            f"- Split protocol (jobs.prepare_data, `{manifest}`): split by {by} ({who}), multilabel-stratified, "
            f"shares {settings.get('fractions', '?')} (train, val, test), seed {settings.get('split_seed', '?')}; "
            f"labels from the {settings.get('labeler', '?')} labeler, views {settings.get('views', '?')}, up to "
            f"{settings.get('per_label', '?')} images per label."
        )
    else:
        lines.append(f"- Split protocol: not recorded (no manifest.json in `{split_dir}`).")
    lines.append(
        "- Selection: every configuration, epoch and seed was chosen on the validation split only; the test split "
        "is read by `jobs.evaluate` alone. Reports are the study's templated mini reports (one sentence per "
        f"CheXpert label mentioned); labels count as positive when stated present, uncertain ones as "
        f"`{cfg.evaluation.uncertain}`."
    )
    return lines


def _cost_lines(choice: Choice, size_mb: float) -> list[str]:
    """The measured cost of the trial that produced the checkpoint, as the sweep's report lists it."""
    trial = choice.table[choice.table["trial_id"].astype(str) == choice.trial_id].iloc[0]
    device = choice.reported.get("device", "?")
    kind = trial.get("peak_mem_kind")

    def cell(col: str, spec: str) -> str:
        value = trial.get(col)
        return format(float(value), spec) if value is not None and not analysis._isnan(value) else "n/a"

    return [
        "| trainable params | total params | peak memory (MB) | train samples/s | wall time (s) | checkpoint (MB) "
        "| this export (MB) |",
        "|---|---|---|---|---|---|---|",
        f"| {cell('trainable_params', ',.0f')} | {cell('total_params', ',.0f')} | {cell('peak_mem_mb', ',.0f')} "
        f"| {cell('train_samples_per_s', ',.1f')} | {cell('wall_seconds', ',.0f')} "
        f"| {cell('checkpoint_mb', '.2f')} | {size_mb:.2f} |",
        "",
        f"Measured by the trial that produced this checkpoint (seed {choice.seed}, at its last epoch, on {device}); "
        f"peak memory is {kind if isinstance(kind, str) else 'as the trial measured it'}. The sweep's report "
        "compares these across methods and plans them at git-base scale.",
    ]


def _use_lines(info: dict, cfg) -> list[str]:
    n = cfg.evaluation.max_new_tokens
    fmt, ref = info["format"], info["base_model"]["reference"]
    gen = "" if fmt != ADAPTER or ref == BASE_DIR else f", max_new_tokens={n}"
    lines = ["```python", "from pathlib import Path", "", "from PIL import Image",
             "from transformers import AutoModelForCausalLM, AutoProcessor", "",
             'folder = Path("path/to/this/folder")', "processor = AutoProcessor.from_pretrained(folder)"]  # fmt: skip
    if fmt == ADAPTER:
        lines.insert(5, "from peft import PeftModel")
        base = 'folder / "base"' if ref == BASE_DIR else repr(ref)
        lines += [f"base = AutoModelForCausalLM.from_pretrained({base})",
                  "model = PeftModel.from_pretrained(base, folder).eval()"]  # fmt: skip
    else:
        lines.append("model = AutoModelForCausalLM.from_pretrained(folder).eval()")
    lines += [
        'pixels = processor(images=Image.open("image.jpg").convert("RGB"), return_tensors="pt").pixel_values',
        f"ids = model.generate(pixel_values=pixels{gen})",
        "print(processor.batch_decode(ids, skip_special_tokens=True)[0])",
        "```",
        "",
    ]
    if fmt == ADAPTER and ref == BASE_DIR:
        lines += [
            "`adapter_config.json` names its base as `base`: a path relative to this folder, where a copy of the "
            "base model (with its processor) lies. peft resolves `base_model_name_or_path` against the working "
            "directory, so `AutoPeftModelForCausalLM.from_pretrained` finds it only when run from inside this "
            "folder; loading the base yourself, as above, works from anywhere. Or use the merged form: "
            "`python -m jobs.export RESULTS --config-id '...' --merge --out DIR`.",
            "",
        ]
    elif fmt == ADAPTER:
        lines += [f"The base model is the hub model `{ref}` (downloaded on first use).", ""]
    if fmt != ADAPTER or ref == BASE_DIR:
        lines += [
            f"`generation_config.json` sets `max_new_tokens` to {n}, the length the sweep generated with.",
            "",
        ]
    lines += [
        "Reports and the 14 labels parsed from them, for many images, with this project:",
        "",
        "```bash",
        "python -m jobs.predict path/to/this/folder IMAGES_OR_FOLDERS... --out predictions.csv",
        "python -m jobs.predict path/to/this/folder --csv test_split.csv --image-root ROOT --out predictions.csv",
        "```",
    ]
    return lines


def _limits(cfg) -> list[str]:
    from cxr_core.model import EMBEDDED

    lines = ["- **Not a medical device.** A research artefact of a method comparison (full fine-tuning vs "
             "LoRA); it must not be used for diagnosis, triage or any clinical decision."]  # fmt: skip
    if cfg.model == EMBEDDED:
        lines.append(
            "- The base is the project's embedded tiny GIT (0.94M parameters, 64 px input), pretrained on "
            "synthetic shapes, not on X-rays. With the project's default data (`jobs.make_synthetic`) it was "
            "fine-tuned and scored on **synthetic** images drawn from their labels, not on patients' X-rays: its "
            "numbers say nothing about real chest X-rays."
        )
    lines += [
        "- It writes the study's templated mini reports (one fixed sentence per CheXpert label), not free-text "
        "radiology reports; the labels it was trained on are automatic labeler outputs, themselves noisy.",
        "- The validation numbers chose this checkpoint, so they are optimistic; the test numbers (when present) "
        "are the unbiased check, on the split's size shown above.",
    ]
    return lines


def model_card(choice: Choice, info: dict, *, size_mb: float) -> str:
    """The export's README.md: Hugging Face metadata (YAML) and what a user needs to know (see the module
    docstring): use, choice, data and split protocol, configuration, validation and test metrics with their
    intervals, cost, limits."""
    from huggingface_hub import EvalResult, ModelCardData

    from cxr_core.config import trial_config
    from cxr_core.model import EMBEDDED

    cfg = trial_config(choice.arm)
    name = Path(choice.results).name
    fmt, ref = info["format"], info["base_model"]["reference"]
    val_rows = _validation(choice)
    test = _test(choice)
    synthetic = cfg.model == EMBEDDED
    dataset = (
        f"{'synthetic ' if synthetic else ''}MIMIC-CXR-JPG-layout splits ({Path(cfg.data.split_dir).name})"
    )
    evals = []
    for split, rows in (("validation", val_rows), ("test", test[0] if test else [])):
        for r in rows:  # this checkpoint's own numbers
            if r["metric"] in CARD_METRICS and math.isfinite(r["value"]):
                evals.append(EvalResult(task_type="image-to-text", task_name="chest X-ray mini report generation",
                                        dataset_type="mimic-cxr-jpg-splits", dataset_name=dataset,
                                        dataset_split=split, metric_type=r["metric"], metric_name=r["metric"],
                                        metric_value=round(r["value"], 6)))  # fmt: skip
    tags = ["git", "image-to-text", "chest-x-ray", "radiology-report-generation", "ray-tune", choice.method]
    tags += ["peft", choice.method] if fmt == ADAPTER else []
    tags += [f"merged-{choice.method}"] if fmt == MERGED else []
    tags += ["synthetic-data"] if synthetic else []
    data = ModelCardData(
        library_name="peft" if fmt == ADAPTER else "transformers",
        pipeline_tag="image-to-text",
        base_model=ref if fmt == ADAPTER and ref != BASE_DIR else (cfg.model if is_hub_id(cfg.model) else None),
        tags=tags,
        model_name=f"{name}: {choice.config_id}",
        eval_results=evals or None,
    )
    what = {FULL: "a full model (`GitForCausalLM`)",
            MERGED: f"a {_method_name(choice.method)} adapter merged into its base: a plain `GitForCausalLM`",
            ADAPTER: f"a {_method_name(choice.method)} adapter (peft)" + (" with a copy of its base model in `base/`" if ref == BASE_DIR
                                                 else f" over the hub model `{ref}`")}[fmt]  # fmt: skip
    base_name = "the embedded tiny GIT" if cfg.model == EMBEDDED else f"`{cfg.model}`"
    flat: dict = {}
    _flat("", info["config"], flat)
    shown = {k: v for k, v in flat.items() if not k.startswith(("resources.", "data.cache")) and k != "name"}
    method = methods.find(cfg.method) or methods.reference()
    others = tuple(f"{m.section}." for m in methods.registered() if m is not method)
    shown = {k: v for k, v in shown.items() if not k.startswith(others)}  # only the trial's own method section
    for _, long, value in method.shape(method.from_arm(info["config"])):  # derived defaults (LoRA's alpha = 2r)
        key = f"{method.section}.{long}"
        if shown.get(key) is None:
            shown[key] = f"{value:g} (the default)" if isinstance(value, float) else value
    lines = [
        "---", data.to_yaml().strip(), "---", "",
        f"# {name}: {choice.config_id}", "",
        f"GIT ({base_name}) adapted by **{_method_name(choice.method)}** to write chest X-ray "
        f"mini reports, chosen from the Ray Tune sweep `{name}` and exported by `jobs.export` as {what}.", "",
        "## Use", "", *_use_lines(info, cfg), "",
        "## How it was chosen", "",
        f"- Configuration `{choice.config_id}`: {choice.how}; the objective is {choice.metric} ({choice.mode}; "
        f"{choice.metric_source}).",
        f"- Of its seeds, seed {choice.seed} (trial `{choice.trial_id}`) has the best validation {choice.metric}; "
        f"its best checkpoint, exported here, is epoch {choice.epoch}'s ({choice.metric} {_num(choice.value, 4)}; "
        f"`{choice.checkpoint.parent.name}/{choice.checkpoint.name}` in the sweep's folder).",
        *_epoch_note(choice), "",
        "## Data", "", *_data_lines(choice, cfg), "",
        "## Configuration", "",
        "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in shown.items()], "",
        "## Validation", "",
        *_metric_table(val_rows, f"this checkpoint (seed {choice.seed}, epoch {choice.epoch})"), "",
        "## Test", "",
    ]  # fmt: skip
    if test is None:
        lines += ["The test split has not been evaluated for this configuration: `jobs.evaluate` scores each "
                  "method's best configuration, chosen on validation; if it has not run, run "
                  f"`python -m jobs.evaluate {choice.results}`, then export again.", ""]  # fmt: skip
    else:
        lines += [*_metric_table(test[0], f"this checkpoint (seed {choice.seed})"), ""]
        if not test[1]:
            lines += ["jobs.evaluate did not score this very checkpoint (it was run with another metric, which chose "
                      "another epoch), so this checkpoint's own column is empty.", ""]  # fmt: skip
    lines += [
        INTERVALS,
        "",
        "## Cost",
        "",
        *_cost_lines(choice, size_mb),
        "",
        "## Limits",
        "",
        *_limits(cfg),
        "",
    ]
    return "\n".join(lines)
