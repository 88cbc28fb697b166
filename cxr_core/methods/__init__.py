"""The adaptation methods: one registry, one small module per method (``fft``, ``lora``, ``ia3``), in the spirit
of peft's ``tuners/<method>/`` folders and its ``register_peft_method``.

A search space chooses a method by its name (``method: lora``) and configures it in the method's own section
(``lora: {r: 16}``); the YAML stays closed: a name is looked up here, never imported. Everything that depends on
the method asks its :class:`Method`:

- its config section (a dataclass whose field defaults are the method's defaults) and the checks of it;
- how it wraps the model, whether its checkpoint is an adapter and how that reloads;
- the settings that describe a variant (trial folder names, dry-run plan rows, configuration labels, legends);
- its colours, and how it takes part in the comparison (FFT is the reference every other method is compared with).

A new method is a module here (a :class:`Method` subclass and its section dataclass) plus its entry in the list
at the end of this file; nothing else changes.

Settings reach a method in two shapes: an arm's nested dict (``{"lora": {"r": 16}}``; :meth:`Method.from_arm`) and
a flattened results row (``config/lora/r``; :meth:`Method.from_row`); both give a plain dict of its section, with
the defaults filled in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from cxr_core.errors import CxrError

Check = tuple[str, object, str]  # (key, value, fix) of an impossible value; see TrialConfig.checks

METHOD_COLUMN = "config/method"
UNKNOWN_COLOR = "tab:gray"


def short(value) -> str:
    """A setting as a label shows it: ``16`` for 16.0, ``0.005``, ``text``."""
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return f"{float(value):g}"
    return str(value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class Method:
    """One adaptation method. A subclass sets the class attributes and overrides what differs from the base:

    Attributes:
        name: what ``method:`` says in a search space (``lora``).
        title: the name in sentences, legends and column headers (``LoRA``).
        long_title: the name in a report's title (``full fine-tuning``).
        section: the config section of the method's settings (an arm's ``lora:`` mapping).
        Section: the dataclass of that section; its field defaults are the method's defaults.
        reference: the method every other one is compared with (exactly one: FFT).
        adapter: whether a checkpoint holds a PEFT adapter (reloaded onto the base model) or the full model.
        variant_key: the section key whose value splits the method into variants (LoRA's target preset), or None.
        label_keys: section keys that :meth:`shape` shows in a configuration's label (LoRA's rank and alpha).
        order_keys: section keys that order a method's configurations in tables (after the variant).
        plan_keys: the dry-run plan's columns this method fills (:meth:`plan_row`).
        derived_keys: columns :meth:`derived` adds to the configuration table.
        colors: a colour per variant value (``""`` for a method without variants); others are drawn in ``color``.
        legend_title: the legend title of a learning-rate panel's series (which shape each series is).
        lr_note: said after the ratio of this method's best learning rate to the reference's.
        ablations: ``{comparison kind: section key}``: within the best variant, the best configuration of each
            value of the key is compared pairwise (LoRA's ranks).
        grid: (title, rows, columns): two settings drawn as a heatmap, each a results column (a section key's
            or a derived one) with its axis label; None for a method without two shape settings.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    long_title: ClassVar[str]
    section: ClassVar[str]
    Section: ClassVar[type]
    reference: ClassVar[bool] = False
    adapter: ClassVar[bool] = False
    variant_key: ClassVar[str | None] = None
    label_keys: ClassVar[tuple[str, ...]] = ()
    order_keys: ClassVar[tuple[str, ...]] = ()
    plan_keys: ClassVar[tuple[str, ...]] = ()
    derived_keys: ClassVar[tuple[str, ...]] = ()
    colors: ClassVar[Mapping[str, str]] = {}
    color: ClassVar[str] = UNKNOWN_COLOR
    legend_title: ClassVar[str | None] = None
    lr_note: ClassVar[str] = ""
    ablations: ClassVar[Mapping[str, str]] = {}
    grid: ClassVar[tuple[str, tuple[str, str], tuple[str, str]] | None] = None

    # ------------------------------------------------------------------------------------------ settings

    def column(self, key: str) -> str:
        """The results column of a section key: ``config/lora/r``."""
        return f"config/{self.section}/{key}"

    def defaults(self) -> dict:
        return dataclasses.asdict(self.Section())

    def section_from(self, values: Mapping | None = None):
        """The section dataclass from a (partial) dict of its keys, for wrapping a model outside a trial."""
        from cxr_core.config import build

        return build(self.Section, dict(values or {}), where=self.section)

    def from_arm(self, arm: Mapping) -> dict:
        """The method's settings in a trial's arm dict (its section over the defaults)."""
        given = arm.get(self.section) if isinstance(arm, Mapping) else None
        return {**self.defaults(), **(given if isinstance(given, Mapping) else {})}

    def from_row(self, row) -> dict:
        """The method's settings in a flattened results row (``config/<section>/<key>``); a missing or NaN value
        is the default (a search space need not spell out every key)."""
        out = self.defaults()
        for key in out:
            value = row.get(self.column(key)) if hasattr(row, "get") else None
            if not _missing(value):
                out[key] = value.item() if hasattr(value, "item") else value
        return out

    # ------------------------------------------------------------------------------------- description

    def variant_value(self, settings: Mapping) -> str | None:
        """The variant key's value as text (a list of module names joined by commas); None without one."""
        if self.variant_key is None:
            return None
        value = settings.get(self.variant_key)
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else short(value)

    def variant(self, settings: Mapping) -> str:
        """The group a configuration belongs to in tables and plots: ``lora:text``, or ``fft``."""
        value = self.variant_value(settings)
        return self.name if value is None else f"{self.name}:{value}"

    def tag(self, settings: Mapping) -> str:
        """The method in a trial's folder name: ``lora-text`` (a list of modules would make it long: ``lora``)."""
        value = settings.get(self.variant_key) if self.variant_key else None
        return f"{self.name}-{value}" if isinstance(value, str) else self.name

    def shape(self, settings: Mapping) -> list[tuple[str, str, object]]:
        """Settings besides the variant and the learning rate that name a configuration, as
        (short name, long name, value); none by default."""
        return []

    def label_parts(self, settings: Mapping) -> list[str]:
        """``["r=16", "a=32"]``: what a configuration label shows after the variant."""
        return [f"{s}={short(v)}" for s, _, v in self.shape(settings)]

    def describe_parts(self, settings: Mapping) -> list[str]:
        """``["text", "r=16", "alpha=32"]``: the configuration in a sentence (before its learning rate)."""
        value = self.variant_value(settings)
        return ([value] if value is not None else []) + [
            f"{long}={short(v)}" for _, long, v in self.shape(settings)
        ]

    def plan_row(self, settings: Mapping) -> dict:
        """This method's columns of a dry-run plan row (keys: :attr:`plan_keys`)."""
        return {key: settings.get(key) for key in self.plan_keys}

    def derived(self, settings: Mapping) -> dict:
        """Extra columns of the configuration table (keys: :attr:`derived_keys`)."""
        return {}

    def examples(self, size: int) -> list[tuple[str, dict]]:
        """The configurations the benchmarks run, as (name, settings); ``size`` is an adapter's size where the
        method has one (LoRA's rank)."""
        return [(self.name, {})]

    # ------------------------------------------------------------------------------------------- checks

    def checks(self, settings) -> list[Check]:
        """Impossible values of the section (a dataclass instance) as (key, value, fix); none by default."""
        return []

    def check_model(self, model_name: str, settings) -> None:
        """Check the settings against the model's real module tree (on a skeleton, no weights).

        Raises:
            CxrError: a setting that names no module of the model, the key named first.
        """

    # ---------------------------------------------------------------------------------- model and weights

    def wrap(self, model, settings):
        """The model ready to train with this method (``settings``: the section dataclass)."""
        raise NotImplementedError

    def load_checkpoint(self, model_name: str, weights: Path):
        """The model a checkpoint's ``model/`` folder holds: the base model plus the adapter for an adapter
        method, the full model otherwise.

        Raises:
            CxrError: the folder holds the other kind of checkpoint (an adapter is never loaded as a full model).
        """
        from cxr_core.model import load_model

        self.check_checkpoint(Path(weights))
        if self.adapter:
            from peft import PeftModel

            return PeftModel.from_pretrained(load_model(model_name), weights)
        return load_model(str(weights))

    def load_state(self, model, state: dict, *, where: str = "the checkpoint") -> None:
        """Put a checkpoint's weights (its ``model/*.safetensors``) into a freshly wrapped model (a resumed trial).

        Raises:
            CxrError: a weight the model does not have, or (full model) one it lacks.
        """
        if self.adapter:
            from peft import set_peft_model_state_dict

            unexpected = set_peft_model_state_dict(model, state).unexpected_keys
            missing: list[str] = []
        else:
            missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or missing:
            names = ", ".join([*unexpected, *missing][:3])
            raise CxrError(
                f"{where} does not fit a {self.title} model ({len(unexpected)} unexpected and {len(missing)} "
                f"missing weights, e.g. {names}); resume a trial only from its own checkpoints"
            )

    def check_checkpoint(self, weights: Path) -> None:
        """Refuse a checkpoint ``model/`` folder of the other kind (an adapter for a full-model method, or not).

        Raises:
            CxrError: naming what the folder holds and what the method saves.
        """
        is_adapter = (weights / "adapter_config.json").is_file()
        if is_adapter == self.adapter and (is_adapter or (weights / "config.json").is_file()):
            return
        holds = "a PEFT adapter" if is_adapter else "no PEFT adapter"
        wants = "a PEFT adapter (adapter_config.json)" if self.adapter else "a full model (config.json)"
        raise CxrError(
            f"checkpoint {weights} holds {holds}, but method {self.name} saves {wants}; evaluate a checkpoint "
            "with the config of the trial that wrote it"
        )


# ------------------------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (an instance of a :class:`Method` subclass) under its name (in the list at the end of this
    module: the YAML never names code, so only methods registered here can be chosen)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.reference and any(m.reference for m in _REGISTRY.values()):
        raise ValueError("only one method can be the reference")
    _REGISTRY[method.name] = method
    return method


def registered() -> list[Method]:
    """Every method, in registration order (the reference first)."""
    return list(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Method:
    """The method called ``name``.

    Raises:
        CxrError: no such method (the valid names are listed).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise CxrError(f"unknown method {name!r}; use one of {', '.join(_REGISTRY)}") from None


def find(name) -> Method | None:
    """The method called ``name``, or None (a results row with an unknown or missing method)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def reference() -> Method:
    """The method every other one is compared with (FFT)."""
    return next(m for m in _REGISTRY.values() if m.reference)


def compared() -> list[Method]:
    """Every method but the reference, in registration order."""
    return [m for m in _REGISTRY.values() if not m.reference]


def rank(name) -> int:
    """A method's position in the registry (unknown names last): the order of methods in tables."""
    return list(_REGISTRY).index(name) if name in _REGISTRY else len(_REGISTRY)


def of_row(row) -> Method | None:
    """The method of a flattened results row (its ``config/method``)."""
    return find(row.get(METHOD_COLUMN)) if hasattr(row, "get") else None


def variant_of_row(row) -> str:
    """``fft`` or ``lora:<preset>``: the group a results row belongs to in tables and plots."""
    method = of_row(row)
    if method is None:
        value = row.get(METHOD_COLUMN, "?") if hasattr(row, "get") else "?"
        return "?" if _missing(value) else str(value)
    return method.variant(method.from_row(row))


def variant_value_of_row(row) -> str:
    """The variant key's value of a results row (``text`` for ``lora:text``), or its variant when it has none."""
    method = of_row(row)
    value = method.variant_value(method.from_row(row)) if method is not None else None
    return value if value is not None else variant_of_row(row)


def method_of_label(label: str) -> Method | None:
    """The method a variant or configuration label starts with (``lora:text r=4 a=8 lr=0.01`` -> LoRA)."""
    head = str(label).split(" ", 1)[0].split(":", 1)[0]
    return find(head)


def display(label: str) -> str:
    """A variant, group or configuration label for a sentence: ``lora:text r=4`` -> ``LoRA text r=4``,
    ``fft lr=0.001`` -> ``FFT lr=0.001``, ``lora`` -> ``LoRA``."""
    text = str(label)
    method = method_of_label(text)
    if method is None:
        return text
    rest = text[len(method.name) :]
    return method.title + (" " + rest[1:] if rest.startswith(":") else rest)


def color(variant: str) -> str:
    """The colour of a variant (``lora:text``) or method (``fft``) in every figure."""
    method = method_of_label(variant)
    if method is None:
        return UNKNOWN_COLOR
    value = str(variant).split(":", 1)[1] if ":" in str(variant) else ""
    return method.colors.get(value, method.color)


def shown_columns() -> set[str]:
    """Results columns that a configuration label already shows: every method's variant and label keys."""
    return {
        m.column(k) for m in registered() for k in ((m.variant_key,) if m.variant_key else ()) + m.label_keys
    }


def order_columns() -> list[str]:
    """Results columns that order configurations within a variant (LoRA's rank), every method's."""
    return [m.column(k) for m in registered() for k in m.order_keys]


def plan_columns() -> list[str]:
    """The dry-run plan's method columns: every method's :attr:`Method.plan_keys`, first seen first."""
    return list(dict.fromkeys(k for m in registered() for k in m.plan_keys))


def wrap(model, method: str, values: Mapping | None = None):
    """``model`` wrapped by method ``method`` with the section settings ``values`` (a dict; defaults filled in)."""
    m = get(method)
    return m.wrap(model, m.section_from(values))


def examples(size: int) -> list[tuple[str, str, dict]]:
    """Every method's benchmark configurations, as (name, method, settings)."""
    return [(name, m.name, settings) for m in registered() for name, settings in m.examples(size)]


def pairs(present: Sequence[str]) -> list[tuple[Method, Method]]:
    """The method comparisons among the methods ``present``: every compared method vs the reference, then
    every later compared method vs each earlier one (``ia3`` vs ``lora``), in registry order."""
    have = [m for m in registered() if m.name in set(present)]
    ref = [m for m in have if m.reference]
    others = [m for m in have if not m.reference]
    out = [(m, ref[0]) for m in others] if ref else []
    out += [(b, a) for i, a in enumerate(others) for b in others[i + 1 :]]
    return out


def kind(a: Method | str, b: Method | str) -> str:
    """The comparison kind of method ``a``'s best vs method ``b``'s best: ``lora_vs_fft``."""
    name = lambda m: m if isinstance(m, str) else m.name  # noqa: E731
    return f"{name(a)}_vs_{name(b)}"


from cxr_core.methods.fft import Fft  # noqa: E402
from cxr_core.methods.ia3 import Ia3  # noqa: E402
from cxr_core.methods.lora import Lora  # noqa: E402

# The registry's order is the order of tables, panels and comparisons: the reference first, then the others as
# they arrived (a later method's best is compared with each earlier one's).
for _method in (Fft(), Lora(), Ia3()):
    register(_method)
