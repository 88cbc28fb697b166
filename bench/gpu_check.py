"""The GPU check: every GPU figure the project lacks, from one prepared run on the first machine with an NVIDIA GPU
(``bash scripts/gpu_check.sh`` sets up ``.venv/`` and runs this; under 10 minutes on one H200 from a fresh clone).

1. ``python -m bench.gpu`` (in its own process, so the GPU is empty again for the sweep): git-base with random
   weights in bf16, FFT, FFT with the vision tower frozen, the LoRA presets and IA3 at batch 64 and 256:
   samples/s, peak memory, MFU.
2. A real sweep (``jobs.sweep --require-gpu``, a local Ray instance) of git-base's architecture with random
   weights, saved once as a model folder with a processor (224 px CLIP image processing; a WordPiece tokenizer of
   git-base's 30,522-word vocabulary and special-token ids whose first words are the embedded model's, so the
   synthetic reports tokenize to words), on synthetic 224 px images: FFT at ``resources.gpu: 1`` (2 trials) and
   text/all_linear LoRA r=16 at ``gpu: 0.5`` (4 trials, so two share a GPU), 1 epoch each. Every trial's
   throughput, peak memory, wall time, the accelerator id Ray gave it and its start and end; from those, how many
   trials shared a GPU at once and the sweep's wall time against the sum of its trials' (the mean concurrency).
3. One JSON line with every figure (the last line printed; also ``OUT/gpu_check.json``) and ``OUT/gpu_check.md``,
   Markdown tables ready to paste into ``docs/benchmarks.md``.

``--tiny`` runs the same steps on a CPU at tiny size (bench.gpu's tiny GIT; the embedded model with
``resources.gpu: 0`` on 64 px images, a few per trial): what the test suite runs, so the script is known to work
when a GPU comes.

    bash scripts/gpu_check.sh                                # on the GPU machine (sets up .venv/ first)
    python -m bench.gpu_check --tiny --out /tmp/gpu_check    # the CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 30522  # git-base's vocabulary size
SIZE = {"full": 224, "tiny": 64}

SPACE = """# Written by bench.gpu_check: {what}
name: gpu_check
metric: label_f1_micro
mode: max
defaults:
  model: {model}
  data: {{split_dir: {splits}, image_root: {root}, cache_dir: {cache}, max_train: {max_train}, max_val: {max_val}}}
  train: {{epochs: 1, batch_size: {batch}, num_threads: {threads}, warmup_ratio: 0.0}}
  evaluation: {{max_new_tokens: {tokens}, batch_size: {eval_batch}}}
arms:
  - name: fft
    method: fft
    train: {{lr: 1.0e-5, seed: {{grid_search: {seeds}}}}}
    resources: {{cpu: {cpu}, gpu: {fft_gpu}}}
  - name: lora
    method: lora
    lora: {{r: 16, alpha: 32, target_modules: {{grid_search: [text, all_linear]}}}}
    train: {{lr: 1.0e-4, seed: {{grid_search: {seeds}}}}}
    resources: {{cpu: {cpu}, gpu: {lora_gpu}}}
"""
# Per mode: synthetic patients, images per trial, batch sizes, generated tokens, threads, resources per trial and
# seeds (full: 2 FFT + 4 LoRA trials, so LoRA packs two per GPU; tiny: one trial per arm and preset, the same
# steps in half the suite's time).
SETTINGS = {
    "full": {"patients": 240, "max_train": 0, "max_val": 128, "batch": 64, "eval_batch": 128, "tokens": 32,
             "threads": 2, "cpu": 2, "fft_gpu": 1, "lora_gpu": 0.5, "seeds": [0, 1]},
    "tiny": {"patients": 40, "max_train": 8, "max_val": 4, "batch": 8, "eval_batch": 4, "tokens": 4,
             "threads": 1, "cpu": 1, "fft_gpu": 0, "lora_gpu": 0, "seeds": [0]},
}  # fmt: skip


def random_git_base(folder: Path) -> Path:
    """git-base's architecture with random weights (seed 0) as a model folder with a processor (see the module
    docstring); made once, reused when ``folder`` holds one."""
    if (folder / "model.safetensors").is_file() and (folder / "processor_config.json").is_file():
        return folder
    import torch
    from transformers import AutoImageProcessor, BertTokenizer, GitConfig, GitForCausalLM, GitProcessor

    from cxr_core.model import load_processor, resolve_model_name

    folder.mkdir(parents=True, exist_ok=True)
    embedded = load_processor("embedded").tokenizer.get_vocab()
    words = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [w for w, _ in sorted(embedded.items(), key=lambda kv: kv[1]) if not w.startswith("[")]
    words += [f"w{i}" for i in range(VOCAB - len(words))]
    try:  # transformers 5 takes the vocabulary itself (and ignores a vocab_file), 4.x a vocab file
        tokenizer = BertTokenizer(
            vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=512
        )
    except TypeError:
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizer(
            vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512
        )
    assert (len(tokenizer), tokenizer.cls_token_id, tokenizer.sep_token_id) == (VOCAB, 101, 102), "tokenizer"
    side = SIZE["full"]
    images = AutoImageProcessor.from_pretrained(resolve_model_name("embedded"), size={"shortest_edge": side},
                                                crop_size={"height": side, "width": side})  # fmt: skip
    GitProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    GitForCausalLM(GitConfig()).save_pretrained(folder)
    return folder


def run_bench(tiny: bool) -> tuple[dict, float]:
    """bench.gpu in its own process: its JSON result and its seconds."""
    args = ["--tiny", "--device", "cpu", "--steps", "1"] if tiny else []
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                }, seconds  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def make_data(out: Path, mode: str) -> tuple[Path, Path]:
    """Synthetic MIMIC-layout images at the mode's size and their prepared splits (made once per folder)."""
    from cxr_core.prepare import prepare_splits
    from cxr_core.synthetic import make_synthetic

    root, splits = out / f"synthetic-{SIZE[mode]}", out / f"splits-{SIZE[mode]}"
    if not (splits / "val_split.csv").is_file():
        make_synthetic(root, n_patients=SETTINGS[mode]["patients"], seed=0, image_size=SIZE[mode])
        prepare_splits(root, splits, seed=0)
    return root, splits


def run_sweep(out: Path, mode: str, model: str, root: Path, splits: Path) -> tuple[Path, str, float]:
    """The sweep through ``jobs.sweep`` (6 trials with ``--require-gpu`` on a GPU, 3 at tiny size); its folder,
    console and seconds."""
    settings = SETTINGS[mode]
    what = "6 trials of git-base (random weights) at 224 px" if mode == "full" else "the CPU check at tiny size"
    space = out / f"space-{mode}.yaml"
    space.write_text(SPACE.format(what=what, model=model, splits=splits, root=root, cache=out / "cache",
                                  **{k: v for k, v in settings.items() if k != "patients"}))  # fmt: skip
    name = f"gpu_check-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        sys.executable,
        "-m",
        "jobs.sweep",
        str(space),
        "--name",
        name,
        "--storage",
        str(out / "rr"),
        "--quiet",
    ]
    cmd += ["--require-gpu"] if mode == "full" else ["--num-cpus", "2"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    console = proc.stdout + proc.stderr
    (out / f"{name}.console.txt").write_text(console)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise SystemExit(f"gpu_check: the sweep failed: {last} (whole output: {out / f'{name}.console.txt'})")
    return out / "rr" / name, console, seconds


def trial_rows(path: Path) -> list[dict]:
    """One row per trial from the sweep's results: what it trained, where and how fast."""
    import pandas as pd

    from cxr_core.tune_runner import results_frame

    epochs = results_frame(path)
    rows = []
    for _, t in epochs.groupby("trial_id", sort=False):
        last = t.iloc[-1]

        def value(col, default=None, _last=last):
            v = _last.get(col, default)
            return default if v is None or (isinstance(v, float) and pd.isna(v)) else v

        preset = value("config/lora/target_modules", "")
        rows.append({
            "trial": Path(str(last["trial_path"])).name,
            "arm": value("config/name"),
            "method": value("config/method"),
            "preset": preset,
            "gpu_share": float(value("config/resources/gpu", 0.0)),
            "node": value("node_id", ""),
            "accelerator_ids": str(value("accelerator_ids", "")),
            "device": value("device"),
            "gpu_fallback": bool(value("gpu_fallback", False)),
            "status": value("status"),
            "trainable_params": int(value("trainable_params", 0)),
            "train_samples_per_s": round(float(value("train_samples_per_s", 0.0)), 2),
            "train_tokens_per_s": round(float(value("train_tokens_per_s", 0.0)), 1),
            "train_seconds": round(float(value("train_seconds", 0.0)), 2),
            "eval_seconds_per_image": round(float(value("eval_seconds_per_image", 0.0)), 4),
            "peak_mem_mb": round(float(value("peak_mem_mb", 0.0)), 1),
            "peak_mem_kind": value("peak_mem_kind", ""),
            "feature_cache": value("feature_cache", ""),
            "wall_seconds": round(float(value("wall_seconds", 0.0)), 2),
            "started_at": float(t["started_at"].min()),
            "ended_at": float(t["reported_at"].max()),
        })  # fmt: skip
    return sorted(rows, key=lambda r: (r["arm"], r["trial"]))


def packing(rows: list[dict]) -> dict:
    """From the trials' own start/end times and accelerator ids: the most trials that ran at once, the most on
    one GPU at once, whether two LoRA trials shared one, the sweep's span against the sum of its trials'."""
    most = most_per_gpu = 0
    lora_shared = False
    for now in sorted(r["started_at"] for r in rows):
        running = [r for r in rows if r["started_at"] <= now < r["ended_at"]]
        most = max(most, len(running))
        per_gpu: dict[tuple, list[dict]] = {}
        for r in running:
            for gpu in filter(None, r["accelerator_ids"].split(",")):
                per_gpu.setdefault((r["node"], gpu), []).append(r)
        most_per_gpu = max([most_per_gpu, *(len(v) for v in per_gpu.values())])
        lora_shared |= any(sum(r["method"] == "lora" for r in v) >= 2 for v in per_gpu.values())
    span = max(r["ended_at"] for r in rows) - min(r["started_at"] for r in rows)
    busy = sum(r["ended_at"] - r["started_at"] for r in rows)
    return {"trials": len(rows), "most_at_once": most, "most_on_one_gpu": most_per_gpu, "lora_shared_a_gpu":
            lora_shared, "span_s": round(span, 1), "sum_of_trials_s": round(busy, 1),
            "mean_concurrency": round(busy / span, 2) if span > 0 else None}  # fmt: skip


def markdown(result: dict) -> str:
    """The tables for docs/benchmarks.md."""
    bench = result["bench_gpu"]
    lines = [f"GPU check on {result['device']} (torch {result['torch']}, CUDA {result['cuda']}), "
             f"{time.strftime('%Y-%m-%d')}: `bash scripts/gpu_check.sh" + (" --tiny" if result["tiny"] else "")
             + f"`, {result['seconds']['total']:.0f} s after the set-up.", ""]  # fmt: skip
    if "rows" in bench:
        lines += ["bench.gpu (random git-base" + (", tiny" if result["tiny"] else "") + ", bf16 autocast on CUDA):",
                  "", "| config | batch | trainable params | samples/s | peak GiB | model TFLOP/s | MFU |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in bench["rows"]:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['batch']} | {r['error']} | | | | |")
                continue
            peak = "" if r.get("peak_mem_gib") is None else f"{r['peak_mem_gib']:.2f}"
            lines.append(f"| {r['config']} | {r['batch']} | {r['trainable_params']:,} | {r['samples_per_s']:,.1f} | "
                         f"{peak} | {r['model_tflops_per_s']:.1f} | {r['mfu']:.1%} |")  # fmt: skip
    else:
        lines.append(f"bench.gpu failed: {bench.get('error')}")
    sweep = result["sweep"]
    p = sweep["packing"]
    lines += ["", f"Sweep ({sweep['model']}, {sweep['image_px']} px, 1 epoch of {sweep['n_train']} images, "
              f"validation on {sweep['n_val']}): {p['trials']} trials in {p['span_s']:.0f} s from the first start to "
              f"the last end, {p['sum_of_trials_s']:.0f} s of trial time (mean concurrency "
              f"{p['mean_concurrency']}); at most {p['most_at_once']} trials at once, {p['most_on_one_gpu']} on one GPU"
              + ("; two LoRA trials shared a GPU" if p["lora_shared_a_gpu"] else "") + ".", "",
              "| trial | gpu share | GPU id | device | trainable params | train samples/s | peak MB | "
              "eval s/image | feature cache | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sweep["trials"]:
        lines.append(f"| {r['trial'].rsplit('_', 2)[0]} | {r['gpu_share']:g} | {r['accelerator_ids'] or '-'} | "
                     f"{r['device']} | {r['trainable_params']:,} | {r['train_samples_per_s']:,.1f} | "
                     f"{r['peak_mem_mb']:,.0f} | {r['eval_seconds_per_image']:.4f} | {r['feature_cache']} | "
                     f"{r['wall_seconds']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny", action="store_true", help="the same steps on a CPU at tiny size (the test suite's)"
    )
    p.add_argument(
        "--out", default="ray_results/gpu_check", help="working folder (default ray_results/gpu_check)"
    )
    args = p.parse_args(argv)
    import torch

    mode = "tiny" if args.tiny else "full"
    if mode == "full" and not torch.cuda.is_available():
        print(f"gpu_check: error: torch {torch.__version__} sees no CUDA device; run it on a machine with an NVIDIA "
              "GPU and torch's CUDA build (bash scripts/gpu_check.sh sets it up), or pass --tiny for the CPU check",
              file=sys.stderr)  # fmt: skip
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    seconds = {}
    bench, seconds["bench_gpu"] = run_bench(args.tiny)
    print(json.dumps({"step": "bench.gpu", "seconds": round(seconds["bench_gpu"], 1)}), flush=True)
    start = time.perf_counter()
    root, splits = make_data(out, mode)
    model = "embedded" if args.tiny else str(random_git_base(out / "git-base-random"))
    seconds["data_and_model"] = time.perf_counter() - start
    path, console, seconds["sweep"] = run_sweep(out, mode, model, root, splits)
    rows = trial_rows(path)
    seconds["total"] = time.perf_counter() - began
    import pandas as pd

    n = {s: len(pd.read_csv(splits / f"{s}_split.csv")) for s in ("train", "val")}
    limits = SETTINGS[mode]
    result = {
        "bench": "gpu_check",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "bench_gpu": bench,
        "sweep": {
            "folder": str(path),
            "model": "embedded" if args.tiny else "git-base (random weights)",
            "image_px": SIZE[mode],
            "n_train": min(n["train"], limits["max_train"] or n["train"]),
            "n_val": min(n["val"], limits["max_val"] or n["val"]),
            "packing": packing(rows),
            "gpu_fallback_line": next((x for x in console.splitlines() if "ran on CPU although" in x), None),
            "trials": rows,
        },
    }
    (out / "gpu_check.md").write_text(markdown(result))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"tables for docs/benchmarks.md: {out / 'gpu_check.md'}", flush=True)
    print(json.dumps(result))
    ok = "error" not in bench and all(r["status"] == "TERMINATED" for r in rows)
    return 0 if ok and (args.tiny or not any(r["gpu_fallback"] for r in rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
