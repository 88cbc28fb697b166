"""(IA)^3 via peft's ``IA3Config`` (Liu et al., 2022): learned vectors that rescale the attention keys and values
and the feed-forward's intermediate activations, the base model frozen. On GIT that is, per layer, the output of
the key and value projections and the input of the feed-forward's down projection (whose input is the
intermediate activation): in the vision tower ``self_attn.k_proj``, ``self_attn.v_proj`` and ``mlp.fc2``, in the
text decoder ``attention.self.key``, ``attention.self.value`` and ``output.dense`` (not
``attention.output.dense``). A layer adds ``2 x hidden + intermediate`` parameters (4,608 at git-base), about
1/24 of LoRA at r=8 on the same towers. A checkpoint is the adapter alone, reloaded onto the base model.

Presets: ``vision``, ``text`` (one tower) and ``all`` (both); or a list of module names (suffixes work, as for
LoRA), where a feed-forward down projection is scaled on its input and every other module on its output.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.methods import Method

PRESETS = ("vision", "text", "all")
VISION = ("self_attn.k_proj", "self_attn.v_proj", "mlp.fc2")  # under git.image_encoder
TEXT = ("attention.self.key", "attention.self.value", "output.dense")  # under git.encoder


@dataclass
class Ia3ConfigSection:
    """IA3 settings: ``target_modules`` is a preset (``vision``, ``text``, ``all``) or a list of module names."""

    target_modules: str | list[str] = "all"


def _feedforward(name: str) -> bool:
    """A feed-forward down projection: IA3 scales its input (the intermediate activation), not its output."""
    return name.endswith((".mlp.fc2", ".output.dense")) and not name.endswith(".attention.output.dense")


def resolve(model, targets: str | list[str]) -> tuple[list[str], list[str]]:
    """The full names of the Linear layers IA3 rescales, and those of them that are feed-forward ones.

    Raises:
        CxrError: an unknown preset, or a name that matches no Linear layer (the valid names are listed).
    """
    from cxr_core.errors import CxrError
    from cxr_core.model import linear_module_names, resolve_targets

    if isinstance(targets, str):
        if targets not in PRESETS:
            raise CxrError(
                f"unknown target preset {targets!r}; use one of {', '.join(PRESETS)} or a list of module names"
            )
        towers = {"vision": ("git.image_encoder.", VISION), "text": ("git.encoder.", TEXT)}
        chosen = [towers[t] for t in towers if targets in (t, "all")]
        names = [
            n
            for n in linear_module_names(model)
            for prefix, suffixes in chosen
            if n.startswith(prefix) and n.endswith(tuple(f".{s}" for s in suffixes))
            and not n.endswith(".attention.output.dense")
        ]  # fmt: skip
    else:
        names = resolve_targets(model, list(targets))
    return names, [n for n in names if _feedforward(n)]


def _targets(model, targets) -> list[str]:
    return resolve(model, targets)[0]


class Ia3(Method):
    name = "ia3"
    title = "IA3"
    long_title = "IA3"
    section = "ia3"
    Section = Ia3ConfigSection
    adapter = True
    variant_key = "target_modules"
    plan_keys = ("target_modules",)
    colors = {"vision": "tab:olive", "text": "tab:cyan", "all": "tab:pink"}
    color = "goldenrod"
    lr_note = " (IA3 usually needs a higher one than LoRA)"

    def plan_row(self, settings):
        targets = settings["target_modules"]
        return {"target_modules": targets if isinstance(targets, str) else ",".join(targets)}

    def examples(self, size):
        return [(f"ia3_{p}", {"target_modules": p}) for p in PRESETS]

    def checks(self, s):
        if not isinstance(s.target_modules, str) and not s.target_modules:
            return [("ia3.target_modules", s.target_modules, "give a preset or a non-empty list")]
        return []

    def check_model(self, model_name, settings):
        from cxr_core.errors import CxrError
        from cxr_core.model import check_targets

        try:
            check_targets(model_name, settings.target_modules, resolve=_targets)
        except CxrError as exc:
            raise CxrError(f"`ia3.target_modules`: {exc}") from None

    def wrap(self, model, s):
        from peft import IA3Config, get_peft_model

        targets, feedforward = resolve(model, s.target_modules)
        return get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=feedforward))
