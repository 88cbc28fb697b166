"""Cost of each method across model scales on CPU: parameters, planned and measured memory, step time.

Models (default): the embedded tiny GIT (``embedded``, 0.94M parameters, 64 px), the embedded small GIT
(``embedded-small``, 5.06M, 64 px), and git-base and git-large built with random weights (``arch:git-base``,
177M, 224 px; ``arch:git-large``, 394M, 224 px with 14 px patches). Each model runs at its own input size, at
batch 2 with 32-token texts and AdamW, under seven configurations (FFT, FFT with the vision tower frozen, LoRA
r=8 on each preset), on one torch thread by default. Three parts:

1. **Plan** (no weights built): trainable and total parameters and the estimated training memory (fp32
   weights + gradients + AdamW moments, activations excluded) from :func:`cxr_core.plan.plan_table`, the same
   table ``python -m jobs.sweep SPACE --dry-run --model NAME`` writes.
2. **Peak memory**: each (model, configuration) in its own fresh process (so one peak never leaks into the
   next): build, apply the method, one warm-up step and one more. Peak = the process's peak RSS (VmHWM, reset
   through /proc/self/clear_refs) above its RSS before the model was built.
3. **Step time**: every pair that ran in part 2, side by side in one process, round-robin over ``--rounds``
   rounds (each pair: the model built, the method applied, one untimed warm-up step, then at least
   ``--steps`` timed steps and ``--min-seconds`` of CPU time); the median per pair of the process's CPU
   seconds per step (``time.process_time``) and of the wall seconds. On one thread the CPU seconds are the
   step's cost on a core of its own; on a shared machine the wall seconds also hold the time the process
   waited for a core (a 2-core VM with a load of 4-11 gave one pair 25, 115 and 38 wall seconds in three
   rounds), so the ratios (to FFT of the same model, and to the first model's FFT) come from CPU seconds.

A pair runs only if its plan fits under ``--max-memory-gb`` (default 24) and, with room for activations
(1.5x the plan), in the memory available now; otherwise its row says why and the rest go on. A child process
that dies (e.g. killed out of memory) gives a row that says so, not a crash.

    python -m bench.method_cost                         # 4 models x 7 configurations; 40-75 min, 2 shared cores
    python -m bench.method_cost --models embedded embedded-small --rounds 5
    python -m bench.method_cost --models arch:git-base --only fft lora_r8_all_linear --steps 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from queue import Empty

ADAPTER_SIZE = 8  # LoRA's rank in the benchmark's configurations (cxr_core.methods.examples)
MODELS = ("embedded", "embedded-small", "arch:git-base", "arch:git-large")
BATCH_TEXT_TOKENS = 32
ACTIVATION_ROOM = 1.5  # a pair needs about this times its plan (weights, gradients, AdamW) free to run


def _vmhwm() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _trial_dict(spec: tuple[str, dict]) -> dict:
    """A configuration (method, settings) as a trial config dict, for the dry-run plan."""
    method, settings = spec
    return {"method": method, method: settings}


def plan_rows(models, configs) -> list[dict]:
    """Part 1: one row per (model, configuration) from the dry-run plan; nothing built but skeletons."""
    from cxr_core.plan import plan_table

    rows = []
    for model in models:
        plan = plan_table([_trial_dict(spec) for _, spec in configs], model=model)
        for (name, _), (_, p) in zip(configs, plan.iterrows(), strict=True):
            rows.append({"model": model, "config": name, "trainable_params": int(p["trainable_params"]),
                         "total_params": int(p["total_params"]),
                         "plan_mem_mb": round(float(p["est_train_memory_mb"]), 1)})  # fmt: skip
    return rows


def _inputs(model, batch: int):
    """Random pixels at the model's own input size and in-vocabulary token ids (fixed seed)."""
    import torch

    cfg = model.config  # a PeftModel forwards .config to the base model
    size = cfg.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    ids = torch.randint(5, min(cfg.vocab_size, 2000), (batch, BATCH_TEXT_TOKENS), generator=generator)
    return pixels, ids


def _step(model, optimizer, pixels, ids) -> None:
    model(pixel_values=pixels, input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _optimizer(model):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def _peak_child(model_name: str, spec: tuple[str, dict], batch: int, threads: int, queue) -> None:
    """Part 2, in a fresh process: peak RSS above the pre-model RSS over a warm-up step and one more."""
    import peft  # noqa: F401  (imported before the baseline)
    import psutil
    import torch

    from cxr_core import methods
    from cxr_core.model import load_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    base = psutil.Process().memory_info().rss
    open("/proc/self/clear_refs", "w").write("5")
    model = methods.wrap(load_model(model_name), *spec)
    model.train()
    optimizer = _optimizer(model)
    pixels, ids = _inputs(model, batch)
    for _ in range(2):  # the first allocates the AdamW state; the second's backward runs with it in place
        _step(model, optimizer, pixels, ids)
    queue.put(round((_vmhwm() - base) / 2**20, 1))


def measure_peak(
    model_name: str, spec: tuple[str, dict], *, batch: int, threads: int
) -> tuple[float | None, str]:
    """(peak MB, "ok") from a fresh process, or (None, why) when the process died without an answer."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(model_name, spec, batch, threads, queue))
    proc.start()
    while True:
        try:
            peak = queue.get(timeout=2)
            proc.join()
            return peak, "ok"
        except Empty:  # still running, or dead
            if not proc.is_alive():
                proc.join()
                why = ": killed, out of memory?" if proc.exitcode == -9 else ""
                return None, f"process died (exit {proc.exitcode}{why})"


def time_side_by_side(pairs, *, batch: int, steps: int, min_seconds: float, rounds: int, threads: int) -> dict:
    """Part 3, in this process: {(model, config): [(CPU s, wall s) per step, one per round]}, round-robin."""
    import torch

    from cxr_core import methods
    from cxr_core.model import load_model

    torch.set_num_threads(threads)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key, _ in pairs}
    for r in range(rounds):
        for (model_name, config), spec in pairs if r % 2 == 0 else pairs[::-1]:  # alternate the order too
            torch.manual_seed(0)
            model = methods.wrap(load_model(model_name), *spec)
            model.train()
            optimizer = _optimizer(model)
            pixels, ids = _inputs(model, batch)
            _step(model, optimizer, pixels, ids)  # warm-up: allocates the AdamW state, not timed
            n, cpu, wall = 0, time.process_time(), time.perf_counter()
            while n < steps or time.process_time() - cpu < min_seconds:
                _step(model, optimizer, pixels, ids)
                n += 1
            cpu, wall = (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n
            times[(model_name, config)].append((cpu, wall))
            del model, optimizer
        print(f"round {r + 1}/{rounds} timed", flush=True)
    return times


def fits(plan_mb: float, *, max_memory_gb: float) -> tuple[bool, str]:
    """Whether a pair may run: its plan under the cap, and with room for activations in the free memory."""
    import psutil

    if plan_mb > max_memory_gb * 1024:
        return False, (f"does not fit in {max_memory_gb:g} GB: the plan alone (weights, gradients, AdamW) is "
                       f"{plan_mb / 1024:.1f} GB")  # fmt: skip
    free = psutil.virtual_memory().available / 2**20
    if plan_mb * ACTIVATION_ROOM > free:
        return False, (f"not run: needs about {plan_mb * ACTIVATION_ROOM / 1024:.1f} GB with activations, "
                       f"{free / 1024:.1f} GB free now on this machine")  # fmt: skip
    return True, "ok"


def main(argv=None) -> dict:
    from cxr_core import methods

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    p.add_argument("--model", help="one model only (same as --models NAME)")
    p.add_argument("--only", nargs="*", help="run only these configs")
    p.add_argument("--steps", type=int, default=2, help="timed steps per pair and round, at least (default 2)")
    p.add_argument(
        "--min-seconds", type=float, default=1.0, help="and at least this much CPU time per pair and round"
    )
    p.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds (default 3)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU)")
    p.add_argument("--max-memory-gb", type=float, default=24.0, help="skip pairs whose plan exceeds this")
    args = p.parse_args(argv)
    models = [args.model] if args.model else args.models
    configs = [(n, (m, s)) for n, m, s in methods.examples(ADAPTER_SIZE) if not args.only or n in args.only]
    specs = dict(configs)

    rows = plan_rows(models, configs)
    for r in rows:
        ok, why = fits(r["plan_mem_mb"], max_memory_gb=args.max_memory_gb)
        if ok:
            r["peak_mem_mb"], why = measure_peak(r["model"], specs[r["config"]], batch=args.batch,
                                                 threads=args.threads)  # fmt: skip
        r["status"] = why
        peak = f"{r['peak_mem_mb']:>9,.1f} MB" if r.get("peak_mem_mb") else f"{'-':>12}"
        print(f"{r['model']:<16} {r['config']:<20} trainable {r['trainable_params']:>12,}  "
              f"plan {r['plan_mem_mb']:>9,.1f} MB  peak {peak}  {why}", flush=True)  # fmt: skip

    ran = [((r["model"], r["config"]), specs[r["config"]]) for r in rows if r["status"] == "ok"]
    times = time_side_by_side(ran, batch=args.batch, steps=args.steps, min_seconds=args.min_seconds,
                              rounds=args.rounds, threads=args.threads)  # fmt: skip
    by_key = {(r["model"], r["config"]): r for r in rows}
    for key, seconds in times.items():
        for i, kind in enumerate(("cpu", "wall")):
            by_key[key][f"step_{kind}_s"] = round(statistics.median(s[i] for s in seconds), 4)
            by_key[key][f"step_{kind}_s_rounds"] = [round(s[i], 4) for s in seconds]
    # FFT: the registry's reference method, whose plain configuration is named after it.
    ref = methods.reference().name
    reference = by_key.get((models[0], ref), {})
    for r in rows:
        fft = by_key.get((r["model"], ref), {})
        if r.get("peak_mem_mb") and fft.get("peak_mem_mb"):
            r["peak_mem_vs_fft"] = round(r["peak_mem_mb"] / fft["peak_mem_mb"], 3)
        if r.get("step_cpu_s") and fft.get("step_cpu_s"):
            r["step_time_vs_fft"] = round(r["step_cpu_s"] / fft["step_cpu_s"], 3)
        if r.get("step_cpu_s") and reference.get("step_cpu_s"):
            r["step_time_vs_reference_fft"] = round(r["step_cpu_s"] / reference["step_cpu_s"], 2)
    for r in rows:
        if "step_cpu_s" in r:
            print(f"{r['model']:<16} {r['config']:<20} step {r['step_cpu_s']:.4f} CPU s "
                  f"({r['step_wall_s']:.3f} wall s), vs FFT {r.get('step_time_vs_fft', float('nan')):.3f}",
                  flush=True)  # fmt: skip
    result = {"bench": "method_cost", "models": models, "reference": f"{models[0]} fft", "batch": args.batch,
              "text_tokens": BATCH_TEXT_TOKENS, "steps": args.steps, "min_seconds": args.min_seconds,
              "rounds": args.rounds, "threads": args.threads, "max_memory_gb": args.max_memory_gb,
              "memory": "plan: fp32 weights + gradients + AdamW (activations excluded); peak: peak RSS above "
                        "pre-model RSS in a fresh process (CPU)",
              "step_time": "median over round-robin rounds, all pairs in one process; ratios from CPU seconds",
              "rows": rows}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
