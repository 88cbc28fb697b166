"""Tune's ``result.json`` writer, minus a loss of results when Tune restarts a failed trial.

Tune's :class:`~ray.tune.logger.JsonLoggerCallback` copies the storage's ``result.json`` over the driver's own at
every start of a trial, restarts after a failure (``max_failures``, a lost worker node) included. The storage's
copy lags behind by the results reported since the driver's last upload, so those epochs vanished from
``result.json`` (``progress.csv`` kept them), and with them from the analysis. The driver's copy, when it has
one, is the newest: it is kept. A resumed sweep (a new driver, no copy yet) still starts from the storage's.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import JsonLoggerCallback


class KeepNewestJsonLogger(JsonLoggerCallback):
    """:class:`JsonLoggerCallback` that restores ``result.json`` from the storage only when this driver has none."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return  # this driver wrote it: the storage holds nothing newer
        super()._restore_from_remote(file_name, trial)
