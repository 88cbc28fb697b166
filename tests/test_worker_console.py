"""What a trial's process prints when Ray stops it: the SIGTERM that lands inside a finalizer is not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Ray's worker handler for SIGTERM raises SystemExit (ray._private.worker.Worker.main_loop); here the signal lands
# while a finalizer runs, as it does when garbage collection runs a WeakSet callback at the moment a sweep ends.
# A finalizer with a real error follows: that one must still be printed.
SCRIPT = """
import os, signal, sys

def ray_like_handler(signum, frame):
    raise SystemExit(1)

signal.signal(signal.SIGTERM, ray_like_handler)
if sys.argv[1] == "quiet":
    from cxr_core.console import quiet_worker
    quiet_worker()

class StoppedWhileCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs between these bytecodes, inside __del__
            pass

class BrokenFinalizer:
    def __del__(self):
        raise ValueError("a real error in a finalizer")

StoppedWhileCollected()
BrokenFinalizer()
print("still running")
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_the_sigterm_that_stops_a_trial_inside_a_finalizer_prints_no_traceback():
    plain, quiet = _run("plain"), _run("quiet")
    # Without quiet_worker, Python prints the SystemExit it cannot raise there (what reached the sweep's console).
    assert plain.returncode == 0 and "still running" in plain.stdout
    assert "SystemExit: 1" in plain.stderr and "Exception ignored in" in plain.stderr
    # With it (every trial process calls it), that one is gone; a real finalizer error is still printed.
    assert quiet.returncode == 0 and "still running" in quiet.stdout
    assert "SystemExit" not in quiet.stderr
    assert quiet.stderr.count("Traceback") == 1 and "ValueError: a real error in a finalizer" in quiet.stderr
