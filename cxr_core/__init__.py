"""Core library of the FFT-vs-LoRA study: data, model, one trial, metrics, search spaces, analysis.

Only :mod:`cxr_core.tune_runner` imports Ray; everything else runs without it.
"""

__version__ = "0.1.0"
