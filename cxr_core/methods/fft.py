"""Full fine-tuning (FFT): every parameter trains, optionally with one tower frozen (partial baselines). The
reference method: every other method is compared with its best configuration. A checkpoint is the full model
(``save_pretrained`` safetensors)."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.errors import choices, lookup
from cxr_core.methods import Method

# ``fft.freeze``: name -> the towers (:func:`tower_of`) whose parameters stay frozen. Validation (:meth:`Fft.checks`)
# and :meth:`Fft.wrap` both use this table.
FREEZE = {"none": frozenset(), "vision": frozenset({"vision"}), "text": frozenset({"text"})}


@dataclass
class FftConfigSection:
    """Full fine-tuning settings: ``freeze`` a tower (``vision`` or ``text``) for partial baselines."""

    freeze: str = "none"


def tower_of(name: str) -> str:
    """``vision``, ``text`` or ``other`` (visual projection, image-token embeddings) for a GIT parameter name."""
    if name.startswith("git.image_encoder."):
        return "vision"
    if name.startswith(("git.encoder.", "git.embeddings.", "output.")):
        return "text"
    return "other"


class Fft(Method):
    name = "fft"
    title = "FFT"
    long_title = "full fine-tuning"
    section = "fft"
    Section = FftConfigSection
    reference = True
    adapter = False
    plan_keys = ("freeze",)
    colors = {"": "tab:red"}
    color = "tab:red"

    def checks(self, settings):
        if settings.freeze in FREEZE:
            return []
        return [("fft.freeze", settings.freeze, f"must be one of {choices(FREEZE)}")]

    def wrap(self, model, settings):
        """Every parameter trains, except a frozen tower's (``vision``: the image encoder; ``text``: the text
        decoder's embeddings, layers and LM head)."""
        frozen = lookup(FREEZE, settings.freeze, "fft.freeze")
        for name, p in model.named_parameters():
            p.requires_grad_(tower_of(name) not in frozen)
        return model

    def examples(self, size):
        return [("fft", {}), ("fft_freeze_vision", {"freeze": "vision"})]
