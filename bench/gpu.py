"""git-base on a GPU in bf16 at realistic batch sizes: every method's configurations (FFT, FFT with the vision
tower frozen, each LoRA preset at r=16, ...: :func:`cxr_core.methods.examples`), samples/s, peak memory, MFU.

Random weights (``arch:git-base``), random 224x224 images and 48-token texts, AdamW (fused on CUDA), bf16
autocast, TF32. Model FLOPs per sample = 6 x (vision params x image tokens + decoder params x (image +
text tokens)) (the usual 6N-per-token training estimate, embeddings and LM head counted in the decoder);
MFU = achieved model FLOP/s / the accelerator's peak dense bf16 FLOP/s (``--peak-tflops``, default 989
for H100/H200 SXM).

The ``*_cached`` rows are the arms whose image encoder is frozen (text LoRA, FFT with the vision tower frozen)
with the frozen-encoder feature cache (:mod:`cxr_core.feature_cache`): the batch's encoder outputs are computed
once, before timing, kept on the GPU in bf16 and served to GIT, as a trial does when they fit on the device.
Their model FLOPs leave out the encoder, which they no longer run.

    python bench/gpu.py                          # on a GPU machine, < 5 minutes
    python -m bench.gpu --tiny --device cpu      # the same code on a CPU at tiny size (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

ADAPTER_SIZE = 16  # LoRA's rank in the benchmark's configurations
CACHED = (
    "fft_freeze_vision",
    f"lora_r{ADAPTER_SIZE}_text",
)  # also run with the feature cache, as ``NAME_cached``


def tiny_config():
    from transformers import GitConfig

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    return GitConfig(vision_config=vision, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, vocab_size=1000, max_position_embeddings=128)  # fmt: skip


def flops_per_sample(model, text_len: int, *, encoder: bool = True) -> float:
    cfg = model.config
    vc = cfg.vision_config
    img_tokens = (vc.image_size // vc.patch_size) ** 2 + 1
    # The base model's parameters (called before a method wraps it: an adapter's few parameters add no FLOPs
    # worth counting); with the feature cache the image encoder's forward pass is not run at all.
    vision = sum(p.numel() for n, p in model.named_parameters() if ".image_encoder." in f".{n}")
    decoder = sum(p.numel() for n, p in model.named_parameters() if ".image_encoder." not in f".{n}")
    return 6.0 * (vision * img_tokens * encoder + decoder * (img_tokens + text_len))


def run_config(name, spec, *, device, batch, steps, text_len, tiny, cached: bool = False) -> dict:
    from transformers import GitForCausalLM

    from cxr_core import feature_cache, methods
    from cxr_core.model import load_model, parameter_counts

    torch.manual_seed(0)
    base = GitForCausalLM(tiny_config()) if tiny else load_model("arch:git-base")
    flops = flops_per_sample(base, text_len, encoder=not cached)
    model = methods.wrap(base, *spec).to(device)
    trainable, total = parameter_counts(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    size = model.config.vision_config.image_size
    vocab = model.config.vocab_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(5, vocab, (batch, text_len), device=device)
    bf16 = device.type == "cuda"
    if cached:  # the encoder's outputs once, on the device (bf16 under autocast), served to GIT by image number
        assert feature_cache.frozen_reason(model) is None, name
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features = feature_cache.image_encoder(model)(pixels).last_hidden_state
        features = features.to(torch.bfloat16 if bf16 else torch.float32)
        feature_cache.serve(model, feature_cache.FeatureBank([feature_cache.Features(features, features.dtype)],
                                                            features))  # fmt: skip
        pixels = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=pixels, input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warmup: kernels, allocator, AdamW state
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    sps = batch * steps / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    name = f"{name}_cached" if cached else name
    return {"config": name, "batch": batch, "trainable_params": trainable, "total_params": total,
            "samples_per_s": round(sps, 2), "peak_mem_gib": round(peak, 2) if peak is not None else None,
            "model_tflops_per_s": round(flops * sps / 1e12, 3), "_flops": flops}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="*", default=[64, 256])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--text-len", type=int, default=48)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--tiny", action="store_true", help="tiny random GIT (to check the script on a CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = [2] if args.tiny and args.batch == [64, 256] else args.batch
    rows = []
    from cxr_core import methods

    for batch in batches:
        examples = [(name, *spec) for name, *spec in methods.examples(ADAPTER_SIZE)]
        runs = [*((n, s, False) for n, *s in examples), *((n, s, True) for n, *s in examples if n in CACHED)]
        for name, spec, cached in runs:
            try:
                row = run_config(name, spec, device=device, batch=batch, steps=args.steps, text_len=args.text_len,
                                 tiny=args.tiny, cached=cached)  # fmt: skip
            except torch.OutOfMemoryError:
                row = {"config": f"{name}_cached" if cached else name, "batch": batch, "error": "out of memory"}
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the previous configuration's model is gone once run_config returned
            row.pop("_flops", None)
            if "model_tflops_per_s" in row:
                row["mfu"] = round(row["model_tflops_per_s"] / args.peak_tflops, 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"bench": "gpu", "device": name, "peak_tflops": args.peak_tflops, "tiny": args.tiny, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
