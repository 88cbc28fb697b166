"""The embedded GIT backbones: few-MB ``GitForCausalLM`` models in Hugging Face format, made by the project.

The study's real backbone is ``microsoft/git-base`` (176M parameters, from the hub). Tests, CPU demos and the
search-space smoke runs need a backbone that loads offline, trains at CPU speed and already knows how to
caption *something*, so that fine-tuning it measures adaptation rather than learning from scratch. This
module builds one: GIT's own architecture (same classes, same module names, so the LoRA presets apply), at
64 px with 8 px patches and 128-wide towers, pretrained here on a generic synthetic captioning task that is
*not* the chest X-ray task:

    image:   64 px gray canvas (drawn at 128 px) with 1-3 shapes (circle, square, triangle, bar, ring;
             small or large; bright or dark) in distinct cells of a 3x3 grid of positions
    caption: "there are two shapes. at the top left, a large bright circle. at the right, a small dark bar."

There are two sizes (:data:`GIT_SIZES`): ``tiny`` (0.94M parameters, ``cxr_core/assets/tiny-git``, model
name ``embedded``) and ``small`` (5.06M: 256-wide, 3 layers per tower; ``cxr_core/assets/small-git``, model
name ``embedded-small``). Both share the tokenizer, the processor, the task and the training recipe (init and
learning rate scaled to the width), so the same data, presets and spaces apply to either; the study's scale axis
runs over them.

The pieces, each a builder: :func:`build_tokenizer` (a small uncased WordPiece ``BertTokenizerFast`` that
covers every word the report template writes), :func:`build_processor` (``GitProcessor`` with a 64 px CLIP
image processor), :func:`tiny_git_config`, the synthetic data (:func:`synthetic_captions`) and
:func:`pretrain`, which trains, evaluates against the random initialisation and saves the folder that ships
in ``cxr_core/assets/`` (see ``jobs/build_tiny_git.py`` and ``docs/tiny_git.md``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
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

from cxr_core.mini_report import report_vocabulary

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
BACKGROUND = (100, 140)  # gray level range of the canvas (0-255); near the CLIP mean, so shapes stand out
NOISE = 8.0  # std of the per-pixel Gaussian noise
# Patch rows (and columns) of the top / middle / bottom (left / center / right) thirds of the 8x8 patch grid.
REGIONS = ((0, 3), (3, 5), (5, 8))
# 3x3 grid, row-major: cell index -> the phrase of its position.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)


@dataclass(frozen=True)
class GitSize:
    """One embedded GIT size: both towers share width, depth, heads and MLP width; plus its build recipe.

    Attributes:
        name: ``tiny`` or ``small`` (``jobs.build_tiny_git --size``).
        folder: its committed folder under ``cxr_core/assets``.
        width, layers, heads, mlp: hidden size, layers, attention heads and MLP width of each tower.
        initializer_range: std of GIT's normal init, about 1/sqrt(width) (see :func:`tiny_git_config`).
        lr: peak pretraining learning rate.
        steps: pretraining steps of the committed build (the ``--steps`` default).
        stored_dtype: dtype of the tensors in ``model.safetensors``; ``config.json`` always says float32, so
            ``from_pretrained`` loads (and training runs) in fp32 either way. ``float16`` halves the folder.
    """

    name: str
    folder: str
    width: int
    layers: int
    heads: int
    mlp: int
    initializer_range: float
    lr: float
    steps: int
    stored_dtype: str = "float32"


# The small one halves the learning rate as the width doubles: at the tiny one's 1e-3 it ended at held-out token
# accuracy 0.955 and exact match 0.375, at 5e-4 at 0.992 and 0.820 (docs/tiny_git.md).
GIT_SIZES = {
    "tiny": GitSize("tiny", "tiny-git", 128, 2, 4, 512, initializer_range=0.1, lr=1e-3, steps=2400),
    "small": GitSize(
        "small", "small-git", 256, 3, 8, 1024, 0.0625, lr=5e-4, steps=2400, stored_dtype="float16"
    ),
}


def git_size(size: str) -> GitSize:
    """The :class:`GitSize` called ``size``.

    Raises:
        ValueError: an unknown size.
    """
    if size not in GIT_SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(GIT_SIZES)}")
    return GIT_SIZES[size]


def embedded_model_path(size: str = "tiny") -> Path:
    """The committed folder of an embedded GIT (``cxr_core/assets/tiny-git`` for ``tiny``), resolved relative
    to this package."""
    return Path(__file__).resolve().parent / "assets" / git_size(size).folder


# --------------------------------------------------------------------------------------------- tokenizer


def caption_vocabulary() -> list[str]:
    """Every word and punctuation mark a synthetic caption can contain."""
    words = {"there", "is", "are", "shape", "shapes", "a", "at", "the", ".", ","}
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


def tiny_git_config(tokenizer: BertTokenizerFast, size: str = "tiny") -> GitConfig:
    """An embedded GIT's config; ``tiny``: 2 ViT + 2 decoder layers, width 128, 4 heads, MLP 4x; 64 px input.

    ``small`` is 3 + 3 layers, width 256, 8 heads, MLP 1024 (:data:`GIT_SIZES`); input (64 px, 8 px patches),
    vocabulary and text positions are the same for every size. The tiny one is sized so that full fine-tuning
    on 64 px images with ~45-token texts runs at >= 80 samples/s on one CPU thread (docs/tiny_git.md). Two
    departures from GIT-base's defaults, both for a narrow model trained briefly: ``initializer_range`` about
    1/sqrt(width) (0.1 for the tiny one; at GIT-base's 0.02 the shape words stayed at chance for 1,600
    pretraining steps, at 0.1 they are learned within ~500), and no dropout (the pretraining data is
    unlimited; a fine-tuning run can set ``hidden_dropout_prob`` itself).
    """
    shape = git_size(size)
    return GitConfig(
        vision_config={
            "hidden_size": shape.width,
            "intermediate_size": shape.mlp,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "initializer_range": shape.initializer_range,
        },
        vocab_size=len(tokenizer),
        hidden_size=shape.width,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=shape.initializer_range,
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
    """'there are two shapes. at the top left, a large bright circle. at the right, a small dark bar.'

    The position comes first: the decoder then reads size, brightness and shape at a place it has named.
    """
    n = len(objects)
    head = "there is one shape." if n == 1 else f"there are {COUNT_WORDS[n - 1]} shapes."
    parts = [f"at the {POSITIONS[o.cell]}, a {o.size} {o.brightness} {o.shape}." for o in objects]
    return " ".join([head, *parts])


def render_scene(objects: Sequence[SceneObject], rng: np.random.Generator) -> Image.Image:
    """Draw the scene: gray noisy background, each shape on the model's patch grid inside its region. RGB.

    Shapes sit on whole 8 px model patches (a small one fills one patch, a large one a 2x2 block), at a random
    patch of their region of the 3x3 grid (patch rows/columns 0-2, 3-4, 5-7). Aligned shapes make the patch
    embedding see whole shapes, so the tiny ViT learns them in minutes rather than hours; brightness, extent
    and a sub-pixel jitter still vary.
    """
    patch = RENDER_SIZE * PATCH_SIZE // IMAGE_SIZE  # one model patch, in px at RENDER_SIZE
    background = float(rng.uniform(*BACKGROUND))
    canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), int(background))
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        span = 1 if o.size == "small" else 2  # patches per side
        extent = rng.uniform(0.7, 0.95) * span * patch
        value = int(rng.uniform(195, 255) if o.brightness == "bright" else rng.uniform(0, 55))
        (r0, r1), (c0, c1) = REGIONS[o.cell // 3], REGIONS[o.cell % 3]
        row, col = int(rng.integers(r0, r1 - span + 1)), int(rng.integers(c0, c1 - span + 1))
        jitter = (span * patch - extent) / 2
        cx = (col + span / 2) * patch + rng.uniform(-jitter, jitter)
        cy = (row + span / 2) * patch + rng.uniform(-jitter, jitter)
        _draw_shape(draw, o.shape, cx, cy, extent / 2, value, vertical=bool(rng.integers(2)))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, NOISE, (RENDER_SIZE, RENDER_SIZE))
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
    model: GitForCausalLM,
    processor: GitProcessor,
    batches: Sequence[tuple[dict, list[str]]],
    *,
    generate: bool = True,
) -> dict:
    """Held-out caption loss, teacher-forced token accuracy and greedy exact-match rate.

    Args:
        model: the captioner (put in eval mode here).
        processor: its processor (decodes the generated ids).
        batches: ``(inputs, captions)`` pairs from :func:`synthetic_batch`.
        generate: also caption greedily from the image alone and count exact matches with the reference.

    Returns:
        ``{"loss", "token_accuracy", "n_images"}`` (+ ``"exact_match"``): loss and accuracy are over caption
        tokens ([SEP] included, [CLS] excluded), as the training loss counts them.
    """
    model.eval()
    n_image = model.git.encoder.layer[0].attention.self.image_patch_tokens
    loss_sum = correct = tokens = exact = n = 0
    for inputs, captions in batches:
        logits = model(**inputs).logits[:, n_image:-1]  # (B, T-1, V): text position t predicts token t+1
        target = inputs["labels"][:, 1:]
        mask = target != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum").item()
        correct += (logits.argmax(-1)[mask] == target[mask]).sum().item()
        tokens += int(mask.sum())
        n += len(captions)
        if generate:
            max_new = inputs["input_ids"].shape[1] + 8
            ids = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=max_new, do_sample=False)
            texts = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
            exact += sum(_words(t) == _words(c) for t, c in zip(texts, captions, strict=True))
    metrics = {"loss": loss_sum / tokens, "token_accuracy": correct / tokens, "n_images": n}
    if generate:
        metrics["exact_match"] = exact / n
    return metrics


def _words(text: str) -> list[str]:
    return re.sub(r"([.,])", r" \1 ", text.lower()).split()


# ------------------------------------------------------------------------------------------- pretraining


@dataclass(frozen=True)
class PretrainArgs:
    """Pretraining hyper-parameters; the defaults (with ``steps=2400, seed=0``) built the committed tiny model,
    and with ``size="small", threads=1`` the small one (docs/tiny_git.md)."""

    steps: int
    seed: int
    size: str = "tiny"
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    eval_size: int = 256
    eval_batch_size: int = 128
    threads: int = 2


def new_tiny_git(tokenizer: BertTokenizerFast, *, seed: int, size: str = "tiny") -> GitForCausalLM:
    """A freshly initialised embedded GIT of ``size``, as pretraining starts it: GIT's init + 2-D sin-cos ViT
    positions.

    Seeds torch's global RNG with ``seed`` (the init, and everything torch draws after it).
    """
    torch.manual_seed(seed)
    model = GitForCausalLM(tiny_git_config(tokenizer, size))
    init_vision_positions(model)
    return model


def init_vision_positions(model: GitForCausalLM, *, scale: float = 1.0) -> None:
    """Give the ViT 2-D sin-cos position embeddings (MAE-style) in place of its N(0, 0.1) init.

    Through the patch embedding a shape's patch is ~2 per channel, which drowns a N(0, 0.1) position
    embedding after the pre-LayerNorm: the tower then sees a bag of patches and needs far longer to learn
    *where* a shape is (position words 35-65% right after 1,200 steps, against > 97% from this start). A
    grid-shaped start of comparable size fixes that; the embeddings stay trainable. Row 0 ([CLS]) starts at 0.
    """
    embeddings = model.git.image_encoder.vision_model.embeddings
    dim, side = embeddings.embed_dim, embeddings.image_size // embeddings.patch_size
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):  # (side*side,) each
        angle = coord[:, None].float() * omega[None, :]  # (side*side, dim/4)
        parts += [torch.sin(angle), torch.cos(angle)]
    grid = torch.cat(parts, dim=1) * scale  # (side*side, dim)
    with torch.no_grad():
        embeddings.position_embedding.weight.zero_()
        embeddings.position_embedding.weight[1:, : grid.shape[1]] = grid


def pretrain(
    out_dir: str | Path,
    *,
    steps: int,
    seed: int,
    size: str = "tiny",
    batch_size: int = 16,
    lr: float | None = None,
    eval_size: int = 256,
    threads: int = 2,
    command: str | None = None,
) -> dict:
    """Build an embedded GIT, pretrain it on synthetic captions, evaluate it, and save the folder.

    Deterministic from ``seed`` (initialisation and data) for a given number of threads. Training scenes
    are fresh every step, drawn from one random stream; the held-out scenes come from another. A size stored
    in float16 (``small``) is rounded to it before the final evaluation, so that the figures are those of
    the committed weights; the fp32 figures are kept as ``held_out.pretrained_fp32``.

    Args:
        out_dir: folder to write (created; files of the same names are replaced): ``config.json``,
            ``generation_config.json``, ``model.safetensors``, tokenizer and processor files, and
            ``pretraining.json`` (the returned record).
        steps: optimizer steps (AdamW, linear warmup then cosine decay to 0).
        seed: the one seed everything derives from.
        size: ``tiny`` or ``small`` (:data:`GIT_SIZES`).
        batch_size: scenes per step.
        lr: peak learning rate (default: the size's, :attr:`GitSize.lr`).
        eval_size: held-out scenes for the before/after evaluation.
        threads: torch intra-op threads while this runs (restored afterwards).
        command: the command line to record; defaults to the ``jobs.build_tiny_git`` one.

    Returns:
        The record: command, settings, wall time, training-loss curve summary, held-out metrics of the
        random initialisation and of the pretrained model, parameter count and folder size.

    Raises:
        ValueError: an unknown ``size``; ``steps``, ``batch_size`` or ``eval_size`` below 1.
    """
    shape = git_size(size)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_size", eval_size)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    lr = shape.lr if lr is None else lr
    args = PretrainArgs(steps, seed, size, batch_size=batch_size, lr=lr, eval_size=eval_size, threads=threads)
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        processor = build_processor()
        model = new_tiny_git(processor.tokenizer, seed=seed, size=size)
        held_out = _held_out_batches(processor, args)
        before = caption_metrics(model, processor, held_out)
        train_start = time.perf_counter()
        losses = _train(model, processor, args)
        train_time = time.perf_counter() - train_start
        after = caption_metrics(model, processor, held_out)
        after_fp32 = None
        if shape.stored_dtype != "float32":
            after_fp32 = after
            round_to_stored_dtype(model, shape.stored_dtype)
            after = caption_metrics(model, processor, held_out)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    save_model(model, out_dir, shape.stored_dtype)
    processor.save_pretrained(out_dir)  # processor_config.json, tokenizer.json, tokenizer_config.json
    # The classic per-component files too, for loaders that look for them (transformers 4.x, slow BERT).
    processor.image_processor.save_pretrained(out_dir)  # preprocessor_config.json
    vocab = sorted(processor.tokenizer.get_vocab().items(), key=lambda item: item[1])
    (out_dir / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
    record = {
        "command": command
        or f"python -m jobs.build_tiny_git --size {size} --out {out_dir} --steps {steps} --seed {seed}",
        **asdict(args),
        "stored_dtype": shape.stored_dtype,
        "optimizer": "AdamW(betas=(0.9, 0.98)), no decay on biases/norms/embeddings, grad-norm clip 1.0",
        "schedule": f"linear warmup over {args.warmup_fraction:.0%} of the steps, then cosine to 0",
        "torch": torch.__version__,
        "wall_time_s": round(wall, 1),
        "train_time_s": round(train_time, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "folder_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),  # before this file
        "train_loss_curve": _curve_summary(losses),
        "held_out": {
            "random_init": _rounded(before),
            "pretrained": _rounded(after),
            **({"pretrained_fp32": _rounded(after_fp32)} if after_fp32 is not None else {}),
        },
        "task": "synthetic shapes captioning (1-3 shapes, 3x3 positions), e.g. "
        + scene_caption(sample_scene(np.random.default_rng(7))),
    }
    (out_dir / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def round_to_stored_dtype(model: GitForCausalLM, dtype: str) -> None:
    """Round every parameter (in place, staying fp32) to what ``dtype`` can hold, as saving will.

    Raises:
        ValueError: a value outside the dtype's range (it would be saved as inf).
    """
    target = getattr(torch, dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            rounded = p.to(target)
            if not torch.isfinite(rounded).all():
                raise ValueError(f"{name} holds values outside the range of {dtype}; store it in float32")
            p.copy_(rounded.float())


def save_model(model: GitForCausalLM, out_dir: Path, stored_dtype: str = "float32") -> None:
    """``save_pretrained`` in fp32, then (``float16``, ``bfloat16``) the weights file rewritten in that dtype.

    ``config.json`` keeps ``"dtype": "float32"``: transformers 5 loads with ``dtype="auto"``, i.e. in the
    config's dtype, so the model loads, trains and is checkpointed in fp32 like the tiny one; only the
    file on disk is half the size.
    """
    model.save_pretrained(out_dir)
    if stored_dtype == "float32":
        return
    target = getattr(torch, stored_dtype)
    weights = out_dir / "model.safetensors"
    tensors = {k: v.to(target) for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})


def _held_out_batches(processor: GitProcessor, args: PretrainArgs) -> list[tuple[dict, list[str]]]:
    rng = np.random.default_rng([args.seed, 1])  # stream 1: held out; training draws from stream 0
    starts = range(0, args.eval_size, args.eval_batch_size)
    return [synthetic_batch(processor, min(args.eval_batch_size, args.eval_size - i), rng) for i in starts]


def _train(model: GitForCausalLM, processor: GitProcessor, args: PretrainArgs) -> list[float]:
    """The optimisation loop over fresh synthetic scenes; returns the training loss of every step."""
    rng = np.random.default_rng([args.seed, 0])
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    schedule = get_cosine_schedule_with_warmup(
        optimizer, max(1, round(args.warmup_fraction * args.steps)), args.steps
    )
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
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            log.info("step %d/%d  loss %.4f", step + 1, args.steps, float(np.mean(losses[-100:])))
    return losses


def _curve_summary(losses: list[float], windows: int = 10) -> list[dict]:
    """Mean training loss over ``windows`` equal runs of steps."""
    edges = np.linspace(0, len(losses), min(windows, len(losses)) + 1).round().astype(int)
    return [
        {"steps": f"{a + 1}-{b}", "mean_loss": round(float(np.mean(losses[a:b])), 4)}
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------- throughput


def train_throughput(
    folder: str | Path | None = None,
    *,
    batch_size: int = 16,
    text_tokens: int = 45,
    steps: int = 20,
    threads: int = 1,
) -> float:
    """Full fine-tuning speed of the tiny GIT on X-ray-shaped batches, in training samples per second.

    One step = forward with labels + backward + AdamW update on (B, 3, 64, 64) images and (B, ``text_tokens``)
    texts, every parameter trainable; timed over ``steps`` steps after 3 warm-up steps.

    Args:
        folder: a tiny GIT folder (default: the embedded one).
        batch_size: samples per step.
        text_tokens: text length per sample ([CLS] ... [SEP]); a typical mini report is 30-60 tokens.
        steps: timed steps.
        threads: torch intra-op threads while timing (restored afterwards).
    """
    model = GitForCausalLM.from_pretrained(folder or embedded_model_path())
    model.train()
    generator = torch.Generator().manual_seed(0)
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    input_ids = torch.randint(5, model.config.vocab_size, (batch_size, text_tokens), generator=generator)
    batch = {"pixel_values": pixel_values, "input_ids": input_ids, "labels": input_ids}
    batch["attention_mask"] = torch.ones_like(input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(3 + steps):
            if step == 3:
                start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return batch_size * steps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
