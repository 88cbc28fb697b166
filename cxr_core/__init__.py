"""Core library of the FFT-vs-LoRA study: data, model, one trial, metrics, search spaces, analysis.

Only :mod:`cxr_core.tune_runner` imports Ray; everything else runs without it. For notebooks,
``cxr_core.results_frame(path)`` returns a sweep's tidy results (one row per trial and epoch, config flattened)
from a local folder or a storage URI; Ray is imported only when it is called.
"""

__version__ = "0.1.0"
__all__ = ["results_frame"]


def __getattr__(name: str):
    if name == "results_frame":  # lazily, so that `import cxr_core` does not import Ray
        from cxr_core.tune_runner import results_frame

        return results_frame
    raise AttributeError(f"module 'cxr_core' has no attribute {name!r}")
