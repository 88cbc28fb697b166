"""Cost of each method at git-base scale on CPU: trainable parameters, peak memory, step time.

Each configuration runs in its own fresh process (so one peak never leaks into the next): build
``arch:git-base`` (random weights; GitConfig() = git-base), apply the method, run a few AdamW steps at
batch 2 on random 224x224 images and 32-token texts. Peak memory is the process's peak RSS above its
RSS before the model was built (VmHWM, reset through /proc/self/clear_refs).

    python -m bench.method_cost            # ~5 minutes on 2 cores
    python -m bench.method_cost --steps 2 --model arch:git-base
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

ADAPTER_SIZE = 8  # LoRA's rank in the benchmark's configurations (cxr_core.methods.examples)


def _vmhwm() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _run(name: str, spec: tuple[str, dict], model_name: str, steps: int, batch: int, queue) -> None:
    import psutil
    import torch

    from cxr_core import methods
    from cxr_core.model import load_model, parameter_counts

    torch.manual_seed(0)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    import peft  # noqa: F401  (imported before the baseline)

    base = psutil.Process().memory_info().rss
    open("/proc/self/clear_refs", "w").write("5")
    model = methods.wrap(load_model(model_name), *spec)
    trainable, total = parameter_counts(model)
    cfg = model.config  # PeftModel forwards .config to the base model
    size = cfg.vision_config.image_size
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    pixels = torch.randn(batch, 3, size, size)
    ids = torch.randint(1000, 2000, (batch, 32))
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocates AdamW state) and is not timed
        start = time.perf_counter()
        loss = model(pixel_values=pixels, input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    queue.put({"config": name, "trainable_params": trainable, "total_params": total,
               "peak_mem_mb": round((_vmhwm() - base) / 2**20, 1),
               "step_s": round(sorted(times[1:])[len(times[1:]) // 2], 3)})  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="arch:git-base")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--only", nargs="*", help="run only these configs")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    from cxr_core import methods

    for name, *spec in methods.examples(ADAPTER_SIZE):
        if args.only and name not in args.only:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, tuple(spec), args.model, args.steps, args.batch, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        r = rows[-1]
        print(f"{r['config']:<22} trainable {r['trainable_params']:>12,}  peak {r['peak_mem_mb']:>8.1f} MB  "
              f"step {r['step_s']:.3f} s", flush=True)  # fmt: skip
    fft = next((r for r in rows if r["config"] == methods.reference().name), None)  # the reference's own config
    if fft:
        for r in rows:
            r["peak_mem_vs_fft"] = round(r["peak_mem_mb"] / fft["peak_mem_mb"], 3)
            r["step_time_vs_fft"] = round(r["step_s"] / fft["step_s"], 3)
    result = {"bench": "method_cost", "model": args.model, "batch": args.batch, "steps": args.steps,
              "memory": "peak RSS above pre-model RSS (CPU)", "rows": rows}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
