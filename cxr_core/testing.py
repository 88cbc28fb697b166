"""Small search spaces on the embedded tiny GIT, written the same way by the tests and the benchmarks.

:func:`two_arm_space` is the search space of the tests' real sweeps and of ``bench.sweep_overhead``: FFT at lr 1e-3
and LoRA r=4 on all linear layers (either or both), a few rows of a prepared split, short greedy evaluation, one
CPU per trial. The tests edit its text to make bad inputs (tests/test_errors.py), so its lines are part of what
they check: change them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ARMS = {
    "fft": ("  - name: fft\n    method: fft\n{samples}    train: {{lr: 1.0e-3}}\n"),
    "lora": (
        "  - name: lora\n    method: lora\n{samples}    lora: {{r: 4, target_modules: all_linear}}\n"
        "    train: {{lr: 5.0e-3}}\n"
    ),
}


def two_arm_space(
    splits: str | Path,
    root: str | Path,
    *,
    name: str = "t",
    metric: str = "label_f1_micro",
    mode: str = "max",
    epochs: int = 2,
    max_train: int = 32,
    max_val: int = 16,
    seeds: Sequence[int] | None = None,
    max_concurrent_trials: int = 0,
    arms: Sequence[str] = ("fft", "lora"),
    num_samples: int = 1,
    extra_arms: str = "",
) -> str:
    """The YAML text of a search space over ``arms`` (``fft``, ``lora`` or both) on the split folder ``splits`` and
    the image root ``root``, each arm repeated ``num_samples`` times and every trial over ``seeds`` (a grid) when
    given; ``extra_arms`` is appended as it is (YAML list items indented as the arms)."""
    seed = f", seed: {{grid_search: {list(seeds)}}}" if seeds else ""
    samples = f"    num_samples: {num_samples}\n" if num_samples != 1 else ""
    return (
        f"name: {name}\n"
        f"metric: {metric}\n"
        f"mode: {mode}\n"
        f"max_concurrent_trials: {max_concurrent_trials}\n"
        "defaults:\n"
        "  model: embedded\n"
        f"  data: {{split_dir: {splits}, image_root: {root}, max_train: {max_train}, max_val: {max_val}}}\n"
        f"  train: {{epochs: {epochs}, batch_size: 16, num_threads: 1{seed}}}\n"
        "  evaluation: {max_new_tokens: 40}\n"
        "  resources: {cpu: 1}\n"
        "arms:\n" + "".join(ARMS[arm].format(samples=samples) for arm in arms) + extra_arms
    )
