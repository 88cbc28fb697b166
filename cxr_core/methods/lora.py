"""LoRA via peft's ``LoraConfig``: low-rank updates ``B A`` (rank ``r``, scaled by ``alpha / r``) beside the
chosen Linear layers, the base model frozen. Target modules are a preset of :data:`cxr_core.model.PRESETS`
(``vision``, ``text``, ``attention``, ``mlp``, ``all_linear``) or a list of module names; a checkpoint is the
adapter alone, reloaded onto the base model."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.errors import choices, lookup
from cxr_core.methods import Method

# ``lora.bias``: name -> the value of peft's ``LoraConfig(bias=...)``. Validation (:meth:`Lora.checks`) and
# :meth:`Lora.wrap` both use this table.
BIAS = {"none": "none", "all": "all", "lora_only": "lora_only"}


@dataclass
class LoraConfigSection:
    """LoRA settings. ``alpha`` defaults to 2 * r; ``target_modules`` is a preset or a list of names."""

    r: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: str | list[str] = "all_linear"
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False


def effective_alpha(settings) -> float:
    """Alpha as trained: the configured value, or 2r when it was left to the default."""
    alpha, r = settings.get("alpha"), settings.get("r")
    return float(alpha) if alpha is not None else 2.0 * float(r)


class Lora(Method):
    name = "lora"
    title = "LoRA"
    long_title = "LoRA"
    section = "lora"
    Section = LoraConfigSection
    adapter = True
    variant_key = "target_modules"
    label_keys = ("r", "alpha")
    order_keys = ("r",)
    plan_keys = ("target_modules", "r", "lora_alpha")
    derived_keys = ("lora_alpha_effective",)
    colors = {
        "vision": "tab:blue",
        "text": "tab:green",
        "all_linear": "tab:purple",
        "attention": "tab:orange",
        "mlp": "tab:brown",
    }
    color = "tab:gray"
    legend_title = "LoRA r / alpha"
    lr_note = " (the field expects about 10x)"
    ablations = {"rank_vs_rank": "r"}
    grid = ("LoRA rank x alpha", ("config/lora/r", "LoRA rank r"), ("lora_alpha_effective", "LoRA alpha"))

    def shape(self, settings):
        return [("r", "r", settings["r"]), ("a", "alpha", effective_alpha(settings))]

    def plan_row(self, settings):
        targets = settings["target_modules"]
        return {
            "target_modules": targets if isinstance(targets, str) else ",".join(targets),
            "r": settings["r"],
            "lora_alpha": effective_alpha(settings),
        }

    def derived(self, settings):
        return {"lora_alpha_effective": effective_alpha(settings)}

    def examples(self, size):
        from cxr_core.model import PRESETS

        return [(f"lora_r{size}_{p}", {"r": size, "alpha": 2 * size, "target_modules": p}) for p in PRESETS]

    def checks(self, s):
        bad = []
        if s.r < 1:
            bad.append(("lora.r", s.r, "must be a positive integer"))
        if s.alpha is not None and not s.alpha > 0:
            bad.append(("lora.alpha", s.alpha, "must be a positive number"))
        if not 0 <= s.dropout < 1:
            bad.append(("lora.dropout", s.dropout, "must be in [0, 1)"))
        if not isinstance(s.target_modules, str) and not s.target_modules:
            bad.append(("lora.target_modules", s.target_modules, "give a preset or a non-empty list"))
        if s.bias not in BIAS:
            bad.append(("lora.bias", s.bias, f"must be one of {choices(BIAS)}"))
        return bad

    def check_model(self, model_name, settings):
        from cxr_core.errors import CxrError
        from cxr_core.model import check_targets

        try:
            check_targets(model_name, settings.target_modules)
        except CxrError as exc:
            raise CxrError(f"`lora.target_modules`: {exc}") from None

    def wrap(self, model, s):
        from peft import LoraConfig, get_peft_model

        from cxr_core.model import resolve_targets

        config = LoraConfig(
            r=s.r,
            lora_alpha=effective_alpha({"r": s.r, "alpha": s.alpha}),
            lora_dropout=s.dropout,
            target_modules=resolve_targets(model, s.target_modules),
            bias=lookup(BIAS, s.bias, "lora.bias"),
            use_rslora=s.use_rslora,
            use_dora=s.use_dora,
        )
        return get_peft_model(model, config)
