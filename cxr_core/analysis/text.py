"""How the summary writes numbers, intervals, configurations and Markdown tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxr_core import methods as registry
from cxr_core.analysis.statistics import _isnan
from cxr_core.analysis.tables import LR, METHOD, _settings, _short


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in frame]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _md(rows: list[dict]) -> str:
    """A Markdown table from dicts of already formatted cells (the first dict's keys are the header)."""
    if not rows:
        return "(none)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "-")) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _num(x: float, digits: int = 3) -> str:
    return "-" if _isnan(x) else f"{x:.{digits}f}"


def _ci(s: dict, digits: int = 3) -> str:
    """``0.412 [0.380, 0.444]``, or the mean alone when there is no interval."""
    if _isnan(s["mean"]):
        return "-"
    if _isnan(s["lo"]):
        return _num(s["mean"], digits)
    return f"{_num(s['mean'], digits)} [{_num(s['lo'], digits)}, {_num(s['hi'], digits)}]"


def _pct(x: float) -> str:
    return "-" if _isnan(x) else f"{100 * x:.0f}%" if abs(x) >= 0.1 else f"{100 * x:.2g}%"


def _count(x: float) -> str:
    return "-" if _isnan(x) else f"{x:,.0f}"


def _describe(row) -> str:
    """``all_linear, r=16, alpha=32, lr=0.005; 2 seeds``: a configuration for a sentence."""
    method, settings = _settings(row)
    bits = method.describe_parts(settings) if method is not None else []
    if not _isnan(row.get(LR)):
        bits.append(f"lr={_short(row[LR])}")
    n = int(row["n_seeds"])
    return f"{', '.join(bits)}; {n} seed{'s' if n != 1 else ''}"


def _seed_note(a: dict, b: dict) -> str:
    n = min(a["n"], b["n"])
    return f"with {n} seed{'s' if n != 1 else ''}" if n >= 2 else "with one seed"


def _title(row) -> str:
    """The display name of a configuration row's method (``LoRA``), or its raw method value."""
    method = registry.of_row(row)
    return method.title if method is not None else str(row.get(METHOD, "?"))
