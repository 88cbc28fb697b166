"""One trial as a function of its config: setup -> (train epoch -> evaluate -> report) x epochs.

No Ray here: the caller passes ``report(metrics, checkpoint_dir)``; :mod:`cxr_core.tune_runner` forwards it
to ``ray.tune.report``. Each epoch writes a checkpoint folder: ``model/`` (a PEFT adapter for an adapter method
such as LoRA, a ``save_pretrained`` safetensors model for FFT: see :mod:`cxr_core.methods`) and
``trial_state.json``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from cxr_core import feature_cache
from cxr_core.cache import resolve_cache_dir
from cxr_core.config import REQUIRE_GPU_FIX, SAMPLINGS, SCHEDULES, TrialConfig, to_dict, trial_config
from cxr_core.dataset import SplitData, batches, load_split, name_weights, sample_weights, template_marks
from cxr_core.errors import CxrError, lookup
from cxr_core.faults import naming_full_disk
from cxr_core.metrics import report_metrics
from cxr_core.model import load_model, load_processor, parameter_counts
from cxr_core.records import ImageRecords, image_records, records_name, save_records

# What run_trial calls with each epoch's metrics and checkpoint folder (ray.tune.report inside a Tune trial).
EpochCallback = Callable[[dict, "Path | None"], None]


def seed_everything(seed: int) -> None:
    """One seed fixes init (of adapters), data order and dropout."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_for(config: TrialConfig) -> torch.device:
    """CUDA when the trial was given a GPU share and CUDA is available here, else the CPU (said by
    :func:`gpu_fallback`)."""
    return torch.device("cuda" if config.resources.gpu > 0 and torch.cuda.is_available() else "cpu")


def gpu_fallback(config: TrialConfig, name: str = "") -> str | None:
    """Why a trial given ``resources.gpu`` > 0 cannot use CUDA here, as one line; None when it can (or asked for
    no GPU). ``name``: the trial's name, for the line."""
    if config.resources.gpu <= 0 or torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    build = (
        "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device visible"
    )
    return (
        f"{name or config.name}: resources.gpu = {config.resources.gpu:g} but CUDA is unavailable here (torch "
        f"{torch.__version__}: {build}; CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'})"
    )


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether forward passes run under bf16 autocast: ``auto`` = on CUDA only; ``bf16`` = on any device (on a
    CPU with AMX 1.38x faster for the embedded model: bench.cpu_precision); ``fp32`` = never."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


class MemoryMeter:
    """Peak memory of the trial's model work: CUDA ``max_memory_allocated``, or on CPU the process's peak
    resident set (VmHWM) above its RSS when :meth:`start` was called, with the data already in memory and
    the libraries imported. So it covers weights, gradients, optimizer state and activations. The
    high-water mark is reset at start through ``/proc/self/clear_refs``; where that is not possible the
    lifetime peak (``ru_maxrss``) is used and the kind says so."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_above_baseline"
        self.baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.baseline = psutil.Process().memory_info().rss
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            self.kind = "cpu_lifetime_peak_rss_above_baseline"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        except OSError:
            pass
        return max(peak - self.baseline, 0) / 2**20


@dataclass
class Setup:
    config: TrialConfig
    model: torch.nn.Module
    processor: object
    train: SplitData
    val: SplitData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    pad_id: int
    start_epoch: int = 0
    features: feature_cache.FeatureCache | None = None  # the frozen encoder's outputs, when they are reused


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str):
    """The factor of the peak learning rate at each step: a linear warmup, then ``schedule`` (a name of
    :data:`cxr_core.config.SCHEDULES`; any other name is a CxrError, never another schedule)."""
    decay = lookup(SCHEDULES, schedule, "train.schedule")
    warmup = max(int(round(total_steps * warmup_ratio)), 0)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return decay((step - warmup) / max(total_steps - warmup, 1))

    return factor


def setup(config: TrialConfig, *, meter: MemoryMeter, resume_from: Path | None = None) -> Setup:
    """Load processor and both splits, then (memory metered from here) model + method, optimizer, schedule."""
    seed_everything(config.train.seed)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    device = device_for(config)
    processor = load_processor(config.model)
    data = config.data
    kw = dict(image_root=data.image_root, processor=processor, policy=data.image_policy)
    kw.update(cache_dir=resolve_cache_dir(data.cache_dir), workers=data.cache_workers)
    train = load_split(data.split_dir, "train", limit=data.max_train, **kw)
    val = load_split(data.split_dir, "val", limit=data.max_val, **kw)
    import peft  # noqa: F401  (imported before metering for every method, so imports never count as memory)

    meter.start()
    model = config.adaptation.wrap(load_model(config.model), config.method_settings)
    start_epoch = 0
    if resume_from is not None:
        start_epoch = _load_checkpoint(config, model, resume_from)
    model.to(device)
    features = None
    if data.feature_cache == "auto":  # nothing in the image encoder trains: its outputs are computed once
        (train, val), features = feature_cache.attach(
            model, [train, val], device=device, autocast=uses_bf16(config.train.precision, device),
            cache_dir=resolve_cache_dir(data.cache_dir), gpu_share=config.resources.gpu,
            chunk=config.evaluation.batch_size, pad_id=processor.tokenizer.pad_token_id,
        )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.lr, weight_decay=config.train.weight_decay)
    steps_per_epoch = math.ceil(len(train) / (config.train.batch_size * config.train.grad_accum))
    total = steps_per_epoch * config.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, config.train.warmup_ratio, config.train.schedule)
    )
    pad_id = processor.tokenizer.pad_token_id
    return Setup(
        config, model, processor, train, val, optimizer, scheduler, device, pad_id, start_epoch, features
    )


def train_epoch(s: Setup, epoch: int) -> dict:
    """One pass over the training split; returns mean loss, samples/s and text tokens/s."""
    cfg = s.config.train
    s.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    loss_sum, tokens, samples, step_in_accum = 0.0, 0, 0, 0
    start = time.perf_counter()
    weighted = lookup(SAMPLINGS, cfg.sampling, "train.sampling")
    weights = sample_weights(s.train.labels, cfg.repeat_threshold) if weighted else None
    marks = template_marks(s.processor.tokenizer) if cfg.name_weight != 1 else None
    keep = _keeps_logits(s.model) if marks else False
    for batch in batches(s.train, batch_size=cfg.batch_size, pad_id=s.pad_id, generator=gen, device=s.device,
                         weights=weights):  # fmt: skip
        # The name weights come from the token ids while they are still on the CPU (no device sync per step).
        w = name_weights(batch["labels"], marks, cfg.name_weight)[:, 1:] if marks else None
        batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg.precision, s.device)):
            if marks is None:
                loss = objective = s.model(**batch).loss
            else:  # the names of present findings weigh name_weight; the reported loss stays the model's own
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                labels = batch["labels"]
                logits = s.model(**inputs, **({"logits_to_keep": labels.shape[1]} if keep else {})).logits
                ce, counted = token_losses(logits, labels)
                w = w.to(ce.device)
                objective = (ce * w).sum() / w.sum()
                loss = ce.sum() / counted.sum()
        (objective / cfg.grad_accum).backward()
        step_in_accum += 1
        if step_in_accum == cfg.grad_accum:
            _optimizer_step(s)
            step_in_accum = 0
        n_tok = int((batch["labels"][:, 1:] != -100).sum())
        loss_sum += loss.item() * n_tok
        tokens += n_tok
        samples += batch["input_ids"].shape[0]
    if step_in_accum:
        _optimizer_step(s)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum / max(tokens, 1),
        "train_samples_per_s": samples / seconds,
        "train_tokens_per_s": tokens / seconds,
        "train_seconds": seconds,
    }


def _optimizer_step(s: Setup) -> None:
    if s.config.train.grad_clip > 0:
        # The optimizer's one parameter group is exactly the trainable parameters: no per-step model walk.
        torch.nn.utils.clip_grad_norm_(s.optimizer.param_groups[0]["params"], s.config.train.grad_clip)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)


def evaluate(s: Setup, data: SplitData) -> tuple[dict, list[str], ImageRecords]:
    """Every metric of ``data`` for the trial's model (see :func:`evaluate_model`)."""
    return evaluate_model(s.model, s.processor, data, evaluation=s.config.evaluation, device=s.device,
                          precision=s.config.train.precision)  # fmt: skip


def per_image_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of each report and its token count, as GIT's own loss scores them.

    GIT's logits cover the image tokens, then the text; the text's are the last ``T`` positions (T = the
    width of ``labels``), shifted by one against the labels, -100 ignored. ``sum(loss) / sum(tokens)`` over a
    batch is the model's batch loss.
    """
    ce, counted = token_losses(logits, labels)
    return ce.sum(dim=1), counted.sum(dim=1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of each text token (B, T - 1; 0 where the label is -100) and the mask of the
    tokens that count, from GIT's logits (the image tokens', then the text's; :func:`per_image_loss`)."""
    text = logits[:, -labels.shape[1] :, :][:, :-1, :].float()
    target = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        text.reshape(-1, text.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    return ce, target != -100


def _keeps_logits(model) -> bool:
    """Whether GIT's forward takes ``logits_to_keep``: then only the text's logits are computed, not the image
    tokens' (for git-base 197 positions x a 30,522-word head that the loss never reads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _greedy(model, processor, max_new_tokens: int) -> dict:
    """``generate`` arguments: greedy, the whole batch at once with the KV cache, stopping when every report has
    ended (its ``eos``, else the tokenizer's [SEP])."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else processor.tokenizer.sep_token_id
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos,
                pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip


@torch.no_grad()
def evaluate_model(
    model, processor, data: SplitData, *, evaluation, device: torch.device, precision: str = "auto"
) -> tuple[dict, list[str], ImageRecords]:
    """Teacher-forced loss, then greedy generation parsed back into labels; every metric of the split.

    Per batch the image encoder runs once, for both (or not at all, with the feature cache); generation runs on
    the whole batch with the KV cache and stops when every report has ended. ``eval_seconds_per_image`` is the
    wall time of all this per image.

    Returns:
        (metrics with ``per_label``, the generated reports, the per-image records keyed by CSV row).
    """
    model.eval()
    start = time.perf_counter()
    loss_sums: list[torch.Tensor] = []
    token_counts: list[torch.Tensor] = []
    generated: list[str] = []
    pad_id = processor.tokenizer.pad_token_id
    greedy = _greedy(model, processor, evaluation.max_new_tokens)
    keeps_logits = _keeps_logits(model)
    for batch in batches(data, batch_size=evaluation.batch_size, pad_id=pad_id, device=device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        with (
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device)),
            feature_cache.encoded_once(model, batch.pop("pixel_values")) as pixel_values,
        ):
            keep = {"logits_to_keep": labels.shape[1]} if keeps_logits else {}
            logits = model(**batch, pixel_values=pixel_values, **keep).logits
            out = model.generate(pixel_values=pixel_values, **greedy)
        loss_sum, tokens = per_image_loss(logits, labels)
        loss_sums.append(loss_sum.cpu())
        token_counts.append(tokens.cpu())
        generated.extend(processor.batch_decode(out, skip_special_tokens=True))
    loss_sum, tokens = torch.cat(loss_sums).numpy(), torch.cat(token_counts).numpy()
    metrics = report_metrics(generated, data.reports, uncertain=evaluation.uncertain)
    metrics["val_loss"] = float(loss_sum.sum() / max(int(tokens.sum()), 1))
    metrics["eval_seconds"] = time.perf_counter() - start
    metrics["eval_seconds_per_image"] = metrics["eval_seconds"] / max(len(data), 1)
    records = image_records(generated, rows=data.rows, loss_sum=loss_sum, tokens=tokens)
    return metrics, generated, records


def load_checkpoint_model(config: TrialConfig, folder: Path) -> torch.nn.Module:
    """The model saved in a checkpoint folder, as the trial's method reloads it (base model + adapter, or the full
    model; :meth:`cxr_core.methods.Method.load_checkpoint` refuses the other kind)."""
    return config.adaptation.load_checkpoint(config.model, Path(folder) / "model")


def save_checkpoint(s: Setup, folder: Path, epoch: int) -> int:
    """Write ``model/`` (adapter or full model), ``training_state.pt`` (optimizer and schedule, for resuming)
    and ``trial_state.json`` into ``folder``; returns the bytes of ``model/`` (the deliverable's size)."""
    s.model.save_pretrained(folder / "model")
    torch.save({"optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict()},
               folder / "training_state.pt")  # fmt: skip
    (folder / "trial_state.json").write_text(json.dumps({"epoch": epoch, "config": to_dict(s.config)}))
    return sum(p.stat().st_size for p in (folder / "model").rglob("*") if p.is_file())


def _load_training_state(s: Setup, folder: Path) -> None:
    """Restore optimizer and schedule (tensors only: ``weights_only=True`` never unpickles code)."""
    path = folder / "training_state.pt"
    if path.is_file():
        state = torch.load(path, map_location=s.device, weights_only=True)
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])


def _load_checkpoint(config: TrialConfig, model: torch.nn.Module, folder: Path) -> int:
    """Put a checkpoint's weights into the trial's freshly wrapped model, as its method loads them (an adapter's
    into the adapter, a full model's strictly into the model); returns the checkpoint's epoch."""
    from safetensors.torch import load_file

    config.adaptation.check_checkpoint(folder / "model")
    state = {}
    for f in sorted((folder / "model").glob("*.safetensors")):
        state.update(load_file(str(f)))
    config.adaptation.load_state(model, state, where=f"checkpoint {folder}")
    return int(json.loads((folder / "trial_state.json").read_text())["epoch"])


def run_trial(
    config: dict | TrialConfig,
    *,
    report: EpochCallback,
    resume_from: Path | None = None,
    records_dir: Path | None = None,
    name: str = "",
) -> dict:
    """Run one trial and ``report`` every epoch's metrics with a checkpoint folder.

    With ``records_dir``, every validation also writes its per-image records there
    (``val_epoch001.npz``, ...; see :mod:`cxr_core.records`) before the epoch is reported.

    A trial given ``resources.gpu`` > 0 where CUDA is unavailable trains on the CPU and reports
    ``gpu_fallback`` = True with every epoch (the sweep's last lines and the report's summary name such trials:
    :func:`cxr_core.tune_runner.gpu_fallback_line`); with ``resources.require_gpu`` it raises instead, before it
    loads anything (``name`` names the trial in the message).

    Raises:
        CxrError: ``resources.require_gpu`` and no CUDA here.

    Returns:
        The last epoch's metrics.
    """
    cfg = config if isinstance(config, TrialConfig) else trial_config(config)
    fallback = gpu_fallback(cfg, name)
    if fallback and cfg.resources.require_gpu:  # before any data or model is loaded
        raise CxrError(f"{fallback}; {REQUIRE_GPU_FIX}")
    wall_start = time.perf_counter()
    meter = MemoryMeter(device_for(cfg))
    s = setup(cfg, meter=meter, resume_from=resume_from)
    if resume_from is not None:
        _load_training_state(s, resume_from)
    trainable, total = parameter_counts(s.model)
    metrics: dict = {}
    for epoch in range(s.start_epoch, cfg.train.epochs):
        metrics = {"epoch": epoch + 1, **train_epoch(s, epoch)}
        val, _, records = evaluate(s, s.val)
        if records_dir is not None:
            with naming_full_disk(records_dir):
                save_records(records, Path(records_dir) / records_name("val", epoch + 1))
        metrics.update({k: v for k, v in val.items() if k != "per_label"})
        metrics.update({f"f1/{label}": v["f1"] for label, v in val["per_label"].items()})
        with tempfile.TemporaryDirectory(prefix="cxr-ckpt-") as tmp:
            with naming_full_disk(tmp):  # a full disk: the message names the path and its free space
                size = save_checkpoint(s, Path(tmp), epoch + 1)
            metrics.update(
                trainable_params=trainable,
                total_params=total,
                peak_mem_mb=meter.peak_mb(),
                peak_mem_kind=meter.kind,
                checkpoint_mb=size / 2**20,
                wall_seconds=time.perf_counter() - wall_start,
                n_train=len(s.train),
                n_val=len(s.val),
                images_skipped=len(s.train.skipped) + len(s.val.skipped),
                device=s.device.type,
                gpu_fallback=bool(fallback),
                pid=os.getpid(),
                **feature_cache.cost_columns(s.features),
            )
            report(metrics, Path(tmp))
    if s.device.type == "cuda":  # hand the accelerator's memory back before the next trial on this GPU
        del s
        torch.cuda.empty_cache()
    return metrics
