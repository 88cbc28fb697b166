"""The embedded tiny GIT backbone: a few-MB ``GitForCausalLM`` in Hugging Face format, made by the project.

The study's real backbone is ``microsoft/git-base`` (176M parameters, from the hub). Tests, CPU demos and the
search-space smoke runs need a backbone that loads offline, trains at CPU speed and already knows how to
caption *something*, so that fine-tuning it measures adaptation rather than learning from scratch. This
module builds one: GIT's own architecture (same classes, same module names, so the LoRA presets apply), at
64 px with 8 px patches and 128-wide towers, pretrained here on a generic synthetic captioning task that is
*not* the chest X-ray task:

    image:   64 px gray canvas (rendered at 128 px) with 1-3 shapes in a 3x3 grid of positions
    caption: "there are two shapes. a large bright circle at the top left. a small dark bar on the right."

The pieces, each a builder: :func:`build_tokenizer` (a small uncased WordPiece ``BertTokenizerFast`` that
covers every word the report template writes), :func:`build_processor` (``GitProcessor`` with a 64 px CLIP
image processor), :func:`tiny_git_config`, the synthetic data (:func:`synthetic_captions`) and
:func:`pretrain`, which trains, evaluates against the random initialisation and saves the folder that ships
in ``cxr_core/assets/tiny-git`` (see ``jobs/build_tiny_git.py`` and ``docs/tiny_git.md``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (
    BertTokenizerFast,
    CLIPImageProcessor,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    get_cosine_schedule_with_warmup,
)

from cxr_core.report import report_vocabulary

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4, [PAD] = 0 as GIT expects
IMAGE_SIZE = 64  # model input, px
PATCH_SIZE = 8  # -> (64 / 8)^2 + 1 = 65 image tokens in front of the text
RENDER_SIZE = 128  # synthetic images are drawn at this size; the processor resizes them to IMAGE_SIZE
MAX_POSITIONS = 256  # text positions; a full 14-sentence report is about 110 tokens

# Common English function words, so that free text outside the two templates mostly tokenizes word by word.
FUNCTION_WORDS = (
    "a an the this that these those it its there here "
    "is are was were be been being has have had do does did not no nor yes "
    "of in on at to from by with without for as into onto over under above below between near "
    "and or but if then than so also very more most less least some any all each both only "
    "what which who where when how why one two three four five six seven eight nine ten "
    "left right top bottom middle center side upper lower small large big"
).split()
PUNCTUATION = tuple(".,-:;()/?!'\"%+=")
CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")

# The synthetic scene vocabulary.
SHAPES = ("circle", "square", "triangle", "bar", "ring")
SIZES = ("small", "large")
BRIGHTNESSES = ("bright", "dark")
COUNT_WORDS = ("one", "two", "three")
# 3x3 grid, row-major: cell index -> the phrase of its position.
POSITIONS = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the center",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)


def embedded_model_path() -> Path:
    """The committed tiny GIT folder (``cxr_core/assets/tiny-git``), resolved relative to this package."""
    return Path(__file__).resolve().parent / "assets" / "tiny-git"


# --------------------------------------------------------------------------------------------- tokenizer


def caption_vocabulary() -> list[str]:
    """Every word and punctuation mark a synthetic caption can contain."""
    words = {"there", "is", "are", "shape", "shapes", "a", "."}
    words.update(SHAPES, (s + "s" for s in SHAPES), SIZES, BRIGHTNESSES, COUNT_WORDS)
    for phrase in POSITIONS:
        words.update(phrase.split())
    return sorted(words)


def tokenizer_vocabulary() -> list[str]:
    """The WordPiece vocabulary in id order: specials, characters (+ ``##`` forms), punctuation, then words."""
    vocab = list(SPECIAL_TOKENS) + list(CHARACTERS) + ["##" + c for c in CHARACTERS] + list(PUNCTUATION)
    seen = set(vocab)
    words = sorted(set(report_vocabulary()) | set(caption_vocabulary()) | set(FUNCTION_WORDS))
    vocab += [w for w in words if w not in seen]
    return vocab


def build_tokenizer() -> BertTokenizerFast:
    """A small uncased WordPiece tokenizer built like bert-base-uncased's, wrapping text as ``[CLS] ... [SEP]``.

    Its vocabulary holds the BERT special tokens ([PAD] = 0), every word of the report template and of the
    synthetic captions, common function words, punctuation, and the letters and digits with their ``##``
    continuation forms, so that an unseen word splits into characters instead of becoming ``[UNK]``.

    Returns:
        A ``BertTokenizerFast`` (lower-casing, ``model_max_length`` = the model's text positions).
    """
    vocab = {token: i for i, token in enumerate(tokenizer_vocabulary())}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=backend, do_lower_case=True, model_max_length=MAX_POSITIONS)


# ------------------------------------------------------------------------------------- processor, config


def build_processor(tokenizer: BertTokenizerFast | None = None) -> GitProcessor:
    """``GitProcessor`` = CLIP image processor at 64 px (CLIP mean/std, RGB) + the tiny tokenizer.

    Without torchvision, transformers falls back to the PIL CLIP image processor (same settings, same output).
    """
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_convert_rgb=True,
    )
    return GitProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer())


def tiny_git_config(tokenizer: BertTokenizerFast) -> GitConfig:
    """The tiny GIT: 2 ViT layers + 2 decoder layers, width 128, 4 heads, MLP 4x; 64 px input, 8 px patches.

    Sized so that full fine-tuning on 64 px images with ~45-token texts runs at >= 80 samples/s on one CPU
    thread (docs/tiny_git.md). Dropout, activations and layer-norm epsilons are GIT-base's defaults.
    """
    return GitConfig(
        vision_config={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )


# ------------------------------------------------------------------------------------ synthetic captions


@dataclass(frozen=True)
class SceneObject:
    """One shape of a synthetic scene; ``cell`` is its 3x3 grid position, row-major (0 = top left)."""

    shape: str
    size: str
    brightness: str
    cell: int


def sample_scene(rng: np.random.Generator) -> list[SceneObject]:
    """1-3 shapes in distinct grid cells, in reading order (the order the caption names them)."""
    n = int(rng.integers(1, 4))
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    return [
        SceneObject(
            shape=SHAPES[rng.integers(len(SHAPES))],
            size=SIZES[rng.integers(len(SIZES))],
            brightness=BRIGHTNESSES[rng.integers(len(BRIGHTNESSES))],
            cell=cell,
        )
        for cell in cells
    ]


def scene_caption(objects: Sequence[SceneObject]) -> str:
    """'there are two shapes. a large bright circle at the top left. a small dark bar on the right.'"""
    n = len(objects)
    head = "there is one shape." if n == 1 else f"there are {COUNT_WORDS[n - 1]} shapes."
    parts = [f"a {o.size} {o.brightness} {o.shape} {POSITIONS[o.cell]}." for o in objects]
    return " ".join([head, *parts])


def render_scene(objects: Sequence[SceneObject], rng: np.random.Generator) -> Image.Image:
    """Draw the scene: gray noisy background, each shape at a jittered spot of its cell. RGB, RENDER_SIZE px."""
    cell = RENDER_SIZE / 3
    background = float(rng.uniform(90, 160))
    canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), int(background))
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        extent = rng.uniform(30, 38) if o.size == "large" else rng.uniform(15, 20)  # px at RENDER_SIZE
        value = int(rng.uniform(195, 255) if o.brightness == "bright" else rng.uniform(0, 55))
        slack = (cell - extent) / 2
        cx = (o.cell % 3 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (o.cell // 3 + 0.5) * cell + rng.uniform(-slack, slack)
        _draw_shape(draw, o.shape, cx, cy, extent / 2, value, vertical=bool(rng.integers(2)))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, 6.0, (RENDER_SIZE, RENDER_SIZE))
    gray = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, value: int, *, vertical):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=value)
    elif shape == "square":
        draw.rectangle(box, fill=value)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=value)
    elif shape == "bar":
        w, h = (r / 3, r) if vertical else (r, r / 3)
        draw.rectangle((cx - w, cy - h, cx + w, cy + h), fill=value)
    elif shape == "ring":
        draw.ellipse(box, outline=value, width=max(3, round(r / 3)))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def synthetic_captions(n: int, rng: np.random.Generator) -> tuple[list[Image.Image], list[str]]:
    """``n`` random scenes drawn from ``rng``: (images, captions)."""
    images, captions = [], []
    for _ in range(n):
        objects = sample_scene(rng)
        images.append(render_scene(objects, rng))
        captions.append(scene_caption(objects))
    return images, captions


def encode_batch(processor: GitProcessor, images: Sequence[Image.Image], captions: Sequence[str]) -> dict:
    """Model inputs with loss on caption tokens only: ``labels`` = ``input_ids`` with -100 at padding.

    Returns:
        ``pixel_values`` (B, 3, 64, 64) float, ``input_ids`` / ``attention_mask`` / ``labels`` (B, T) long.
    """
    pixel_values = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    text = processor.tokenizer(list(captions), padding=True, return_tensors="pt")
    labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
    return {
        "pixel_values": pixel_values,
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "labels": labels,
    }


def synthetic_batch(processor: GitProcessor, n: int, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """``n`` fresh scenes, encoded for :class:`GitForCausalLM`: (inputs, captions)."""
    images, captions = synthetic_captions(n, rng)
    return encode_batch(processor, images, captions), captions


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def caption_metrics(
    model: GitForCausalLM, processor: GitProcessor, batches: Sequence[tuple[dict, list[str]]], *, generate=True
) -> dict:
    """Held-out caption loss, teacher-forced token accuracy and greedy exact-match rate.

    Args:
        model: the captioner (put in eval mode here).
        processor: its processor (decodes the generated ids).
        batches: ``(inputs, captions)`` pairs from :func:`synthetic_batch`.
        generate: also caption greedily and count exact matches with the reference caption.

    Returns:
        ``{"loss", "token_accuracy", "exact_match", "n"}``; loss is the mean over caption tokens.
    """
    model.eval()
    n_image = model.git.encoder.layer[0].attention.self.image_patch_tokens
    loss_sum = correct = tokens = exact = n = 0
    for inputs, captions in batches:
        out = model(**inputs)
        logits = out.logits[:, n_image:-1]  # (B, T-1, V): position t predicts text token t+1
        target = inputs["labels"][:, 1:]
        mask = target != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum").item()
        correct += (logits.argmax(-1)[mask] == target[mask]).sum().item()
        tokens += int(mask.sum())
        n += len(captions)
        if generate:
            ids = model.generate(
                pixel_values=inputs["pixel_values"], max_new_tokens=inputs["input_ids"].shape[1] + 8
            )
            texts = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
            exact += sum(_normal(t) == _normal(c) for t, c in zip(texts, captions, strict=True))
    metrics = {"loss": loss_sum / tokens, "token_accuracy": correct / tokens, "n": n}
    if generate:
        metrics["exact_match"] = exact / n
    return metrics


def _normal(text: str) -> str:
    return " ".join(text.replace(".", " . ").lower().split())


# ------------------------------------------------------------------------------------------- pretraining


@dataclass(frozen=True)
class PretrainArgs:
    """Pretraining hyper-parameters (the defaults built the committed model)."""

    steps: int = 1500
    seed: int = 0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    eval_size: int = 256
    eval_batch_size: int = 128
    threads: int = 2


def pretrain(
    out_dir: str | Path,
    *,
    steps: int,
    seed: int,
    batch_size: int = PretrainArgs.batch_size,
    lr: float = PretrainArgs.lr,
    eval_size: int = PretrainArgs.eval_size,
    threads: int = PretrainArgs.threads,
    command: str | None = None,
) -> dict:
    """Build the tiny GIT, pretrain it on synthetic captions, evaluate it, and save the folder.

    Deterministic from ``seed`` (initialisation, data, dropout) for a given number of threads. The held-out
    images come from a random stream separate from the training one. Writes ``config.json``,
    ``model.safetensors``, tokenizer and processor files, and ``pretraining.json`` (the returned record).

    Args:
        out_dir: folder to write (created; existing files of the same names are replaced).
        steps: optimizer steps (AdamW, linear warmup then cosine decay to 0).
        seed: the one seed everything derives from.
        batch_size: fresh scenes per step.
        lr: peak learning rate.
        eval_size: held-out scenes for the before/after evaluation.
        threads: torch intra-op threads while this runs (restored afterwards).
        command: the command line to record; defaults to the ``jobs.build_tiny_git`` one.

    Returns:
        The pretraining record: settings, wall time, loss curve summary, held-out metrics of the random
        initialisation and of the pretrained model, parameter count and folder size.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    out_dir = Path(out_dir)
    args = PretrainArgs(
        steps=steps, seed=seed, batch_size=batch_size, lr=lr, eval_size=eval_size, threads=threads
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        processor = build_processor()
        torch.manual_seed(seed)
        model = GitForCausalLM(tiny_git_config(processor.tokenizer))
        held_out = _held_out_batches(processor, args)
        initial = caption_metrics(model, processor, held_out)
        curve = _train(model, processor, args)
        final = caption_metrics(model, processor, held_out)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    record = _record(
        model, args, command or _default_command(out_dir, steps, seed), wall, curve, initial, final
    )
    (out_dir / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    record["folder_bytes"] = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    (out_dir / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _held_out_batches(processor: GitProcessor, args: PretrainArgs) -> list[tuple[dict, list[str]]]:
    rng = np.random.default_rng([args.seed, 1])  # stream 1: held out; training draws from stream 0
    sizes = [
        min(args.eval_batch_size, args.eval_size - i) for i in range(0, args.eval_size, args.eval_batch_size)
    ]
    return [synthetic_batch(processor, k, rng) for k in sizes]


def _train(model: GitForCausalLM, processor: GitProcessor, args: PretrainArgs) -> list[float]:
    """The optimisation loop; returns the training loss of every step."""
    rng = np.random.default_rng([args.seed, 0])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, round(args.warmup_fraction * args.steps))
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, args.steps)
    model.train()
    losses = []
    for step in range(args.steps):
        inputs, _ = synthetic_batch(processor, args.batch_size, rng)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, args.steps, losses[-1])
    return losses


def _curve_summary(losses: list[float], points: int = 10) -> list[dict]:
    """Mean training loss over ``points`` equal windows of steps."""
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).round().astype(int)
    return [
        {"steps": f"{a + 1}-{b}", "mean_loss": round(float(np.mean(losses[a:b])), 4)}
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _default_command(out_dir: Path, steps: int, seed: int) -> str:
    return f"python -m jobs.build_tiny_git --out {out_dir} --steps {steps} --seed {seed}"


def _record(model, args: PretrainArgs, command, wall, curve, initial, final) -> dict:
    rounded = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in {**initial}.items()}
    return {
        "command": command,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "peak_lr": args.lr,
        "schedule": f"AdamW, linear warmup {args.warmup_fraction:.0%} then cosine to 0, grad clip 1.0",
        "threads": args.threads,
        "torch": torch.__version__,
        "wall_time_s": round(wall, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss_curve": _curve_summary(curve),
        "held_out": {
            "n_images": args.eval_size,
            "random_init": rounded,
            "pretrained": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in final.items()},
        },
        "task": "synthetic shapes captioning, e.g. "
        + repr(scene_caption(sample_scene(np.random.default_rng(7)))),
        "loss_note": "mean cross-entropy over caption tokens ([SEP] included); random init ~ ln(vocab)",
        "math_ln_vocab": round(math.log(model.config.vocab_size), 4),
    }
