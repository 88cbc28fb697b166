"""Analysis of a sweep's tidy results (see :func:`cxr_core.results_frame`): one row per trial, trials that
differ only by seed aggregated into configurations (mean, standard deviation, count, 95% t interval), the
best configuration per method and per preset chosen on validation, verdict sentences computed from
those numbers, a constant baseline, and summary.md. Pure pandas, numpy and scipy, no Ray; the diagrams are
drawn by :mod:`cxr_core.plots`. What is particular to a method (its variants, labels, names) comes from
:mod:`cxr_core.methods`; FFT is the reference every other method is compared with.

Works on partial results: errored trials are left out of the statistics and named, unfinished ones are
counted and flagged, and a sweep with one method says that the comparison cannot be made.

The modules, each importable on its own; every public name is also here:

- :mod:`~cxr_core.analysis.statistics`: seed-level intervals (t, Welch, delta method), overlap, Pareto front;
- :mod:`~cxr_core.analysis.tables`: the trial and configuration tables, the best configuration per group;
- :mod:`~cxr_core.analysis.scale`: a sweep over two or more models, per model and across them;
- :mod:`~cxr_core.analysis.text`, :mod:`~cxr_core.analysis.sentences`, :mod:`~cxr_core.analysis.summary`:
  how numbers are written, the sentences, and summary.md section by section.
"""

from cxr_core.analysis.scale import MODEL, Scale, across_scales
from cxr_core.analysis.sentences import (
    CONVERGED_GAIN,
    PROTOCOL,
    baseline_lines,
    comparison_lines,
    convergence_lines,
    cost_shares,
    interval_note,
    lr_lines,
    missing_lines,
    paired_lines,
    preset_lines,
    protocol_lines,
    quality_cost_lines,
    test_verdict,
)
from cxr_core.analysis.statistics import (
    CONFIDENCE,
    MIN_SEEDS_FOR_T,
    difference_interval,
    intervals_overlap,
    mean_interval,
    pareto_front,
    ratio_interval,
)
from cxr_core.analysis.statistics import (
    _isnan as _isnan,  # used by plots, export and study_report
)
from cxr_core.analysis.summary import summary_markdown, test_lines
from cxr_core.analysis.tables import (
    COST,
    LABEL_F1,
    LR,
    METHOD,
    NOT_IN_KEY,
    QUALITY,
    SEED,
    best_config_per,
    best_per,
    chosen_configs,
    config_columns,
    config_label,
    configs_table,
    constant_baseline,
    epoch_bands,
    honest_interval,
    metric_bounds,
    stat,
    test_stats,
    trials_table,
    variant_label,
    with_config_ids,
)
from cxr_core.analysis.text import _pct as _pct  # used by tests
from cxr_core.analysis.text import markdown_table

__all__ = [
    "CONFIDENCE", "CONVERGED_GAIN", "COST", "LABEL_F1", "LR", "METHOD", "MIN_SEEDS_FOR_T", "MODEL",
    "NOT_IN_KEY", "PROTOCOL", "QUALITY", "SEED", "Scale", "across_scales", "baseline_lines", "best_config_per",
    "best_per", "chosen_configs", "comparison_lines", "config_columns", "config_label", "configs_table",
    "constant_baseline", "convergence_lines", "cost_shares", "difference_interval", "epoch_bands",
    "honest_interval", "interval_note", "intervals_overlap", "lr_lines", "markdown_table", "mean_interval",
    "metric_bounds", "missing_lines", "paired_lines", "pareto_front", "preset_lines", "protocol_lines",
    "quality_cost_lines", "ratio_interval", "stat", "summary_markdown", "test_lines", "test_stats",
    "test_verdict", "trials_table", "variant_label", "with_config_ids",
]  # fmt: skip
