"""The model: GIT through ``transformers`` (hub id, folder, or the embedded tiny GIT), its Linear layers by name
and the target presets that name them. How a method adapts the model is its own module's business
(:mod:`cxr_core.methods`).

Module names (docs/domain.md): the vision tower's Linear layers end in ``q_proj, k_proj, v_proj, out_proj,
fc1, fc2`` (under ``git.image_encoder``), the text decoder's in ``query, key, value, dense`` (under
``git.encoder``), the projection is ``git.visual_projection...0`` and the LM head is ``output``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from cxr_core.errors import CxrError

EMBEDDED = "embedded"
EMBEDDED_SIZES = {EMBEDDED: "tiny", "embedded-small": "small"}  # model name -> size in cxr_core.tiny_git
VISION_SUFFIXES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_SUFFIXES = ("query", "key", "value", "dense")
ATTENTION_SUFFIXES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "query",
    "key",
    "value",
    "attention.output.dense",
)
MLP_SUFFIXES = ("fc1", "fc2", "intermediate.dense", "output.dense")
PRESETS = ("vision", "text", "attention", "mlp", "all_linear")
LM_HEAD = "output"
ARCHITECTURES = ("git-base", "git-large")


def resolve_model_name(name: str) -> str:
    """``embedded`` -> the committed tiny GIT folder, ``embedded-small`` -> the small one; anything else is
    returned unchanged."""
    if name in EMBEDDED_SIZES:
        from cxr_core.tiny_git import embedded_model_path

        return str(embedded_model_path(EMBEDDED_SIZES[name]))
    return name


def _arch_config(name: str):
    from transformers import GitConfig

    if name == "git-base":
        return GitConfig()
    # git-large: ViT-L/14 vision tower (1024 hidden, 24 layers) and the same 6-layer BERT-base text decoder.
    return GitConfig(
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
        }
    )


def _checked_model_path(name: str) -> str:
    """Resolve ``name``; a local folder (``embedded``, a path) must hold a ``config.json``."""
    path = resolve_model_name(name)
    if not name or not name.isprintable():
        raise CxrError(f"model name {name!r} is empty or holds control characters; give a folder or a hub id")
    if name.startswith(EMBEDDED) and name not in EMBEDDED_SIZES and not Path(name).exists():
        raise CxrError(
            f"unknown embedded model {name!r}; use one of {', '.join(EMBEDDED_SIZES)} (or a hub id, a folder, "
            "arch:git-base)"
        )
    looks_local = (
        name in EMBEDDED_SIZES or name.startswith((".", "/", "~")) or Path(path).exists() or name.count("/") > 1
    )
    if looks_local and not (Path(path) / "config.json").is_file():
        raise CxrError(
            f"model folder {path} holds no config.json; pass a folder written by save_pretrained, a hub id "
            "such as microsoft/git-base, 'embedded', or arch:git-base"
        )
    return path


def load_model(name: str, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Load ``GitForCausalLM`` from a hub id, a local folder, ``embedded``, or ``arch:git-base|git-large``.

    ``arch:`` names build the architecture with random weights (for planning and benchmarks offline).

    Raises:
        CxrError: a folder that holds no model, or a hub id that cannot be fetched (offline).
    """
    from transformers import AutoModelForCausalLM, GitForCausalLM

    if name.startswith("arch:"):
        arch = name.split(":", 1)[1]
        if arch not in ARCHITECTURES:
            raise CxrError(
                f"unknown architecture {arch!r}; use one of " + ", ".join(f"arch:{a}" for a in ARCHITECTURES)
            )
        return GitForCausalLM(_arch_config(arch))
    path = _checked_model_path(name)
    try:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise CxrError(
            f"cannot load model {name!r}: {str(exc).splitlines()[0]} (offline? pre-download it with "
            "`huggingface-cli download` and pass the folder)"
        ) from None


def model_skeleton(name: str) -> nn.Module:
    """The model's module tree without real weights (on the meta device): for checking module names fast.

    Raises:
        CxrError: a folder without a GIT config, or a hub id that can be neither found in the cache nor fetched
            (a trial could not load it either, so the sweep fails before it starts).
    """
    from transformers import AutoConfig, GitForCausalLM

    if name.startswith("arch:"):
        arch = name.split(":", 1)[1]
        if arch not in ARCHITECTURES:
            raise CxrError(
                f"unknown architecture {arch!r}; use one of " + ", ".join(f"arch:{a}" for a in ARCHITECTURES)
            )
        config = _arch_config(arch)
    else:
        path = _checked_model_path(name)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:  # not cached and offline, no such repo, a bad id or config.json
            raise CxrError(
                f"model {name!r} is neither a model folder nor a hub model that can be loaded "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); pass a folder "
                "written by save_pretrained, 'embedded', arch:git-base, or a hub id (offline: download it first "
                f"with `huggingface-cli download {name}` and pass the folder)"
            ) from None
        if getattr(config, "model_type", None) != "git":
            raise CxrError(
                f"model {name!r} is a {getattr(config, 'model_type', '?')!r} model, not GIT; pass a GIT model "
                "(microsoft/git-base, a folder of one, 'embedded' or arch:git-base)"
            )
    with torch.device("meta"):
        return GitForCausalLM(config)


_TARGET_CACHE: dict[tuple[str, str, str], None] = {}


def check_targets(model_name: str, targets, *, resolve=None) -> None:
    """Raise CxrError when ``targets`` names no Linear layer of ``model_name`` (checked on a skeleton, once per
    model, targets and resolver). ``resolve(model, targets)`` expands them (default :func:`resolve_targets`)."""
    resolve = resolve or resolve_targets
    key = (model_name, repr(targets), f"{resolve.__module__}.{resolve.__qualname__}")
    if key in _TARGET_CACHE:
        return
    resolve(model_skeleton(model_name), targets)
    _TARGET_CACHE[key] = None


def load_processor(name: str):
    """The ``GitProcessor`` (image processor + tokenizer) that belongs to model ``name``."""
    from transformers import AutoProcessor

    if name.startswith("arch:"):
        raise CxrError(
            f"{name} has random weights and no processor; it is only for planning (--dry-run) and benchmarks"
        )
    return AutoProcessor.from_pretrained(resolve_model_name(name))


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` in the model (the LM head included)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Expand a preset or an explicit list into the full names of the Linear layers to adapt.

    Explicit entries are suffixes of module names (``query``, ``mlp.fc1``) or full names, as in peft.

    Raises:
        CxrError: an unknown preset, or a name that matches no Linear layer (the valid names are listed).
    """
    linears = [n for n in linear_module_names(model) if n != LM_HEAD]
    vision = [n for n in linears if ".image_encoder." in f".{n}"]
    text = [n for n in linears if n.startswith("git.encoder.")]
    if isinstance(targets, str):
        if targets == "vision":
            return vision
        if targets == "text":
            return text
        if targets == "attention":
            return [n for n in linears if any(_matches(n, s) for s in ATTENTION_SUFFIXES)]
        if targets == "mlp":
            # "output.dense" is the MLP's down projection; "attention.output.dense" also ends that way.
            return [
                n
                for n in linears
                if any(_matches(n, s) for s in MLP_SUFFIXES) and not _matches(n, "attention.output.dense")
            ]
        if targets == "all_linear":
            return linears
        raise CxrError(
            f"unknown target preset {targets!r}; use one of {', '.join(PRESETS)} or a list of module names"
        )
    chosen: list[str] = []
    for entry in targets:
        hits = [n for n in linears if _matches(n, entry)]
        if not hits:
            short = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in linears})
            raise CxrError(
                f"target module {entry!r} matches no Linear layer of the model; valid names (suffixes work): "
                + ", ".join(short)
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ``total`` includes an adapter method's added parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
