"""What every entry point shares: bad input becomes one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import functools
import os
import sys
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def add_objective_args(p) -> None:
    """``--metric`` and ``--mode`` of the commands that read a sweep (default: the sweep's own)."""
    p.add_argument(
        "--metric",
        help="validation metric that picks each trial's best epoch and the best configurations (default: the "
        "sweep's own `metric` from its search space)",
    )
    p.add_argument(
        "--mode",
        choices=("max", "min"),
        help="default: the sweep's own mode for its metric, else min for a loss and max otherwise",
    )


def main_guard(fn):
    """Wrap ``main``: a :class:`CxrError` prints ``error: MESSAGE`` on stderr and exits 2; Ctrl-C exits 130, and
    SIGTERM, which behaves like Ctrl-C (:func:`cxr_core.faults.sigterm_as_interrupt`), exits 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cxr_core import faults
        from cxr_core.errors import CxrError

        faults.sigterm_as_interrupt()
        # transformers 5 deprecates a name peft still calls; the notice means nothing to a user of these commands
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        try:
            return fn(*args, **kwargs)
        except CxrError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            if getattr(exc, "exit_now", False):  # a thread is stuck in a library that would block the exit
                sys.stdout.flush()
                os._exit(2)
            sys.exit(2)
        except KeyboardInterrupt:
            if faults.terminated():
                print("terminated (SIGTERM)", file=sys.stderr)
                sys.exit(faults.SIGTERM_EXIT)
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
