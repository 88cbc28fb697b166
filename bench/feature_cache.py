"""Epoch and evaluation time with the frozen-encoder feature cache (:mod:`cxr_core.feature_cache`) and without.

At git-base scale (``arch:git-base``, random weights) on this CPU, for the arms whose image encoder is frozen
(LoRA r=8 on the text decoder, FFT with the vision tower frozen): the trial's own training epoch
(:func:`cxr_core.trial.train_epoch`) on the same batches from the same initial weights, once reading pixels from
a pixel cache and running the encoder (``off``), once reading the encoder's outputs from the feature cache as a
trial on a CPU does (``cached``: a memory-mapped file entry). The two alternate over several rounds (which one
goes first alternates too; round 0 warms up and is not counted); median epoch times are compared and the mean
training losses reported, so a speed-up bought with a different loss would show. speedup = off / cached.

Evaluation (:func:`cxr_core.trial.evaluate_model`: teacher-forced loss + greedy generation) on the text-LoRA
arm, seconds per image, on the same weights: the loop as it was before the feature cache (``previous``: the
encoder ran for the loss and again for ``generate``, logits for every image token), the loop now without the
cache (``uncached``: the encoder once per batch, text logits only; what arms that train the encoder get) and
with it (``cached``). Random weights never emit [SEP], so at git-base every report runs to
``--max-new-tokens``.

The features are built once per arm before the rounds (``build_s``, not in the epoch times).

``--demo ROOT`` measures whole trials instead: the demo's text-LoRA arm (``search_spaces/demo.yaml``, arm
``lora``, target ``text``, seed 0: embedded tiny GIT, 5 epochs, bf16, one thread) on the demo's splits under
ROOT (``data/demo`` and ``data/synthetic``, as ``python -m jobs.demo`` writes them), run by
:func:`cxr_core.trial.run_trial` with ``data.feature_cache`` ``auto`` and ``off``, alternating. Round 0 (which
builds the pixel and feature caches, once per node) is not counted.

    python -m bench.feature_cache                    # git-base, 2 arms: ~5 minutes on 2 idle cores
    python -m bench.feature_cache --demo .           # after python -m jobs.demo: ~6 minutes
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {
    "lora_r8_text": {"method": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": "text"}},
    "lora_r16_text": {"method": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": "text"}},
    "fft_freeze_vision": {"method": "fft", "fft": {"freeze": "vision"}},
}


def _processor(model_name: str, tmp: Path):
    """The model's processor; for ``arch:`` models (no processor) a GitProcessor with a BERT tokenizer of
    git-base's vocabulary size and special-token ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102)."""
    from cxr_core.model import load_processor

    if not model_name.startswith("arch:"):
        return load_processor(model_name)
    from transformers import BertTokenizerFast, GitProcessor

    words = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(30522 - len(words))]
    try:  # transformers 5 takes the vocabulary itself (and ignores a vocab_file), 4.x a vocab file
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    except TypeError:
        (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"))
    assert (len(tokenizer), tokenizer.cls_token_id, tokenizer.sep_token_id) == (30522, 101, 102), "tokenizer"
    return GitProcessor(image_processor=load_processor("embedded").image_processor, tokenizer=tokenizer)


def _data(processor, config, n: int, tokens: int, tmp: Path, seed: int = 0):
    """A split of ``n`` random grayscale images in a real pixel cache entry (as trials read them) and texts of
    ``tokens`` tokens (git-base: random words; the embedded model: mini reports of random labels)."""
    from cxr_core.cache import pixel_spec
    from cxr_core.dataset import CachedPixels, SplitData
    from cxr_core.images import Geometry
    from cxr_core.labels import LABELS
    from cxr_core.mini_report import mini_report

    size = config.vision_config.image_size
    rng = np.random.default_rng(seed)
    folder = tmp / "pixels" / f"bench-{n}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "pixels.npy", rng.integers(0, 256, size=(n, 1, size, size), dtype=np.uint8))
    spec = dataclasses.replace(pixel_spec(processor), geometry=Geometry(size, 0, 0, 3, size, size))
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, len(LABELS)), p=[0.2, 0.1, 0.05, 0.65])
    reports = [mini_report(list(v)) for v in values]
    if config.vocab_size > 1000:
        tok = processor.tokenizer
        ids = [
            [tok.cls_token_id, *rng.integers(1000, 2000, tokens - 2).tolist(), tok.sep_token_id]
            for _ in range(n)
        ]
    else:
        ids = processor.tokenizer(reports)["input_ids"]
    pixels = CachedPixels(folder / "pixels.npy", np.arange(n), spec)
    return SplitData(pixel_values=pixels, input_ids=ids, reports=reports, labels=values)


def _setup(base, processor, data, arm: str, *, cached: bool, cache_dir: Path, args):
    """A :class:`cxr_core.trial.Setup` of ``arm`` on a copy of ``base``, with or without the feature cache."""
    from cxr_core import feature_cache
    from cxr_core.config import trial_config
    from cxr_core.trial import Setup, uses_bf16

    cfg = trial_config({**ARMS[arm], "train": {"batch_size": args.batch_size, "lr": 1e-4, "epochs": 1,
                                               "precision": args.precision}})  # fmt: skip
    torch.manual_seed(0)  # the same LoRA initialisation with and without the cache
    model = cfg.adaptation.wrap(copy.deepcopy(base), cfg.method_settings)
    device = torch.device("cpu")
    features = None
    if cached:
        autocast = uses_bf16(args.precision, device)
        (data,), features = feature_cache.attach(
            model, [data], device=device, cache_dir=cache_dir, autocast=autocast, chunk=args.eval_batch
        )
        assert features is not None, f"{arm}: the feature cache was not used"
    opt, sched = _optimizer(model, len(data), args.batch_size)
    pad = processor.tokenizer.pad_token_id
    return Setup(cfg, model, processor, data, data, opt, sched, device, pad, features=features)


def _optimizer(model, n: int, batch_size: int):
    """A fresh AdamW and the trial's schedule for one epoch of ``n`` samples."""
    from cxr_core.trial import lr_lambda

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(-(-n // batch_size), 0.1, "cosine"))


def _previous_evaluate(model, processor, data, *, evaluation, bf16: bool):
    """:func:`cxr_core.trial.evaluate_model` as it was before the feature cache, all of it (loss, generation,
    metrics, records): (seconds, generated reports)."""
    from cxr_core.dataset import batches
    from cxr_core.metrics import report_metrics
    from cxr_core.records import image_records
    from cxr_core.trial import per_image_loss

    model.eval()
    start = time.perf_counter()
    loss_sums, token_counts, generated = [], [], []
    pad_id = processor.tokenizer.pad_token_id
    with torch.no_grad():
        for batch in batches(data, batch_size=evaluation.batch_size, pad_id=pad_id):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                out = model.generate(
                    pixel_values=batch["pixel_values"], max_new_tokens=evaluation.max_new_tokens
                )
            loss_sum, tokens = per_image_loss(logits, batch["labels"])
            loss_sums.append(loss_sum.cpu())
            token_counts.append(tokens.cpu())
            generated += processor.batch_decode(out, skip_special_tokens=True)
    loss_sum, tokens = torch.cat(loss_sums).numpy(), torch.cat(token_counts).numpy()
    report_metrics(generated, data.reports, uncertain=evaluation.uncertain)
    image_records(generated, rows=data.rows, loss_sum=loss_sum, tokens=tokens)
    return time.perf_counter() - start, generated


def _demo(root: Path, rounds: int) -> dict:
    """Whole trials of the demo's text-LoRA arm with the feature cache and without (module docstring)."""
    from cxr_core.space import corner_configs, load_study
    from cxr_core.trial import run_trial

    data = [
        f"data.split_dir={(root / 'data/demo').resolve()}",
        f"data.image_root={(root / 'data/synthetic').resolve()}",
    ]
    study = load_study(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml", overrides=data)
    arm = next(a for a in study.arms if a.name == "lora")
    config = next(
        c for c in corner_configs(arm) if c["lora"]["target_modules"] == "text" and c["train"]["seed"] == 0
    )
    config["data"]["cache_dir"] = tempfile.mkdtemp(prefix="cxr-bench-demo-cache-")
    runs: dict[str, list[dict]] = {"auto": [], "off": []}
    for r in range(rounds + 1):
        for mode in ("off", "auto") if r % 2 else ("auto", "off"):
            config["data"]["feature_cache"] = mode
            epochs: list[dict] = []
            run_trial(copy.deepcopy(config), report=lambda m, folder, out=epochs: out.append(dict(m)))
            epoch = statistics.mean(e["train_seconds"] for e in epochs)
            per_image = statistics.mean(e["eval_seconds_per_image"] for e in epochs)
            print(f"round {r} {mode}: trial {epochs[-1]['wall_seconds']:.1f} s, epoch {epoch:.2f} s, "
                  f"eval {per_image * 1000:.1f} ms/image", flush=True)  # fmt: skip
            if r:
                runs[mode].append({"trial_s": epochs[-1]["wall_seconds"], "epochs": epochs})
    out = {"arm": "lora r=16 text (demo.yaml, seed 0)", "rounds": rounds}
    for mode, key in (("off", "off"), ("auto", "cached")):
        out[f"{key}_trial_s"] = _median([x["trial_s"] for x in runs[mode]])
        out[f"{key}_epoch_s"] = _median([e["train_seconds"] for x in runs[mode] for e in x["epochs"]])
        out[f"{key}_eval_s_per_image"] = _median(
            [e["eval_seconds_per_image"] for x in runs[mode] for e in x["epochs"]]
        )
        out[f"{key}_val_loss"] = round(runs[mode][-1]["epochs"][-1]["val_loss"], 5)
    out["feature_cache_mb"] = runs["auto"][-1]["epochs"][-1]["feature_cache_mb"]
    for what in ("trial", "epoch", "eval"):
        suffix = "_s_per_image" if what == "eval" else "_s"
        out[f"{what}_speedup"] = round(out[f"off_{what}{suffix}"] / out[f"cached_{what}{suffix}"], 3)
    return out


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="arch:git-base")
    p.add_argument(
        "--arms", default="lora_r8_text,fft_freeze_vision", help=f"comma-separated: {', '.join(ARMS)}"
    )
    p.add_argument("--samples", type=int, default=8, help="training images per epoch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokens", type=int, default=40, help="text tokens per sample (git-base)")
    p.add_argument("--rounds", type=int, default=2, help="counted rounds (round 0 warms up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--eval-images", type=int, default=4)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument(
        "--demo", type=Path, help="measure whole demo trials instead (ROOT holds data/demo, data/synthetic)"
    )
    args = p.parse_args(argv)
    if args.demo:
        result = {"bench": "feature_cache", "mode": "demo", **_demo(args.demo, args.rounds)}
        print(json.dumps(result))
        return result
    from cxr_core.model import load_model
    from cxr_core.trial import train_epoch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-features-"))
    processor = _processor(args.model, tmp)
    torch.manual_seed(0)
    base = load_model(args.model)
    data = _data(processor, base.config, args.samples, args.tokens, tmp)
    rows = []
    for arm in args.arms.split(","):
        setups = {}
        for mode in ("off", "cached"):
            start = time.perf_counter()
            setups[mode] = _setup(base, processor, data, arm, cached=mode == "cached", cache_dir=tmp, args=args)
            if mode == "cached":
                build = time.perf_counter() - start
        times: dict[str, list[float]] = {"off": [], "cached": []}
        losses: dict[str, list[float]] = {"off": [], "cached": []}
        initial = {m: copy.deepcopy(s.model.state_dict()) for m, s in setups.items()}
        for r in range(args.rounds + 1):
            for mode in ("cached", "off") if r % 2 else ("off", "cached"):  # ABBA: warm caches favour neither
                s = setups[mode]
                s.model.load_state_dict(initial[mode])  # same initial weights and optimizer every round
                s.optimizer, s.scheduler = _optimizer(s.model, len(s.train), args.batch_size)
                torch.manual_seed(r)  # ... and the same dropout masks in the text decoder (git-base: p=0.1)
                start = time.perf_counter()
                out = train_epoch(s, 0)
                if r:
                    times[mode].append(time.perf_counter() - start)
                    losses[mode].append(out["train_loss"])
        off, cached = _median(times["off"]), _median(times["cached"])
        row = {"arm": arm, "off_epoch_s": off, "cached_epoch_s": cached, "speedup": round(off / cached, 3),
               "off_train_loss": round(statistics.mean(losses["off"]), 5),
               "cached_train_loss": round(statistics.mean(losses["cached"]), 5),
               "build_s": round(build, 2), "feature_cache": setups["cached"].features.where,
               "feature_cache_mb": round(setups["cached"].features.mb, 2)}  # fmt: skip
        print(f"{arm}: off {off:.3f} s/epoch, cached {cached:.3f} s/epoch: {off / cached:.2f}x "
              f"(build {build:.1f} s, {row['feature_cache_mb']} MB)", flush=True)  # fmt: skip
        rows.append(row)
        if arm == args.arms.split(",")[0] and args.eval_images:
            for mode, s in setups.items():
                s.model.load_state_dict(initial[mode])  # the same weights for every evaluation
            evaluation = _eval(setups, processor, args)
        del setups, initial
    tokens = args.tokens if base.config.vocab_size > 1000 else "mini reports"
    result = {"bench": "feature_cache", "model": args.model, "samples": args.samples,
              "batch_size": args.batch_size, "tokens": tokens, "rounds": args.rounds, "threads": args.threads,
              "precision": args.precision, "rows": rows}  # fmt: skip
    if args.eval_images:
        result["eval"] = evaluation
    print(json.dumps(result))
    return result


def _eval(setups: dict, processor, args) -> dict:
    """Evaluation seconds per image: the previous loop, the loop now uncached and cached (alternating), on the
    same weights; and whether the three generated the same reports."""
    from cxr_core.config import EvalConfig
    from cxr_core.trial import evaluate_model

    n = min(args.eval_images, len(setups["off"].val))
    subset = {
        m: dataclasses.replace(
            s.val,
            input_ids=s.val.input_ids[:n],
            reports=s.val.reports[:n],
            labels=s.val.labels[:n],
            rows=s.val.rows[:n],
        )  # fmt: skip
        for m, s in setups.items()
    }
    evaluation = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch)
    cpu = torch.device("cpu")

    def previous():
        bf16 = args.precision == "bf16"
        return _previous_evaluate(
            setups["off"].model, processor, subset["off"], evaluation=evaluation, bf16=bf16
        )

    def now(mode: str):
        s = setups[mode]
        metrics, generated, _ = evaluate_model(
            s.model, processor, subset[mode], evaluation=evaluation, device=cpu, precision=args.precision
        )
        return metrics["eval_seconds"], generated

    runs = {"previous": previous, "uncached": lambda: now("off"), "cached": lambda: now("cached")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    generated: dict[str, list[str]] = {}
    for r in range(args.rounds + 1):
        for name in list(runs)[:: -1 if r % 2 else 1]:
            seconds, generated[name] = runs[name]()
            if r:
                times[name].append(seconds / n)
    per_image = {k: _median(v) for k, v in times.items()}
    out = {"images": n, "batch": args.eval_batch, "max_new_tokens": args.max_new_tokens,
           **{f"{k}_s_per_image": v for k, v in per_image.items()},
           "speedup_uncached": round(per_image["previous"] / per_image["uncached"], 3),
           "speedup_cached": round(per_image["previous"] / per_image["cached"], 3),
           "same_generations": generated["previous"] == generated["uncached"] == generated["cached"],
           }  # fmt: skip
    print(f"eval s/image: previous {per_image['previous']:.3f}, uncached {per_image['uncached']:.3f}, cached "
          f"{per_image['cached']:.3f}", flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    main()
