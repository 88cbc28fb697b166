"""Is a trial's checkpoint whole? And, at a resume, the newest one that is.

A checkpoint folder (:func:`cxr_core.trial.save_checkpoint`) holds ``model/*.safetensors``, ``training_state.pt``
and ``trial_state.json``. A driver killed while Tune was uploading it, a full disk or a damaged file system can
leave one cut short; resuming from it would end the trial with a traceback every time Tune retries it. So at a
resume the checkpoint Tune hands over is checked first (sizes and headers only: no tensor is read), and when it
is damaged, the trial's older checkpoints beside it are tried, newest first; with none intact the trial starts
from scratch. What happened is reported with the next epoch's metrics (``checkpoint_recovery``), shown by the
sweep's last lines and in the report's summary.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zipfile
from pathlib import Path

RECOVERY_KEY = "checkpoint_recovery"


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (header parse and the size its tensors need), or None."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is truncated ({size} bytes)"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return f"{path.name} is truncated ({size} bytes, its header alone needs {n + 8})"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name} has a damaged header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{path.name} is truncated ({size} of {need} bytes)"
    return None


def problems(folder: str | Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from, or None when it is whole.

    Checks: ``trial_state.json`` parses and holds the epoch; every ``model/*.safetensors`` is as long as its
    header says (and there is one); ``training_state.pt``, when present, is a readable zip archive (torch's
    format), which a truncated file is not.
    """
    folder = Path(folder)
    state = folder / "trial_state.json"
    if not state.is_file():
        return "trial_state.json is missing"
    try:
        int(json.loads(state.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        return "trial_state.json is damaged"
    weights = sorted((folder / "model").glob("*.safetensors"))
    if not weights:
        return "model/ holds no .safetensors weights"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem is not None:
            return f"model/{problem}"
    training = folder / "training_state.pt"
    if training.exists():
        try:
            with zipfile.ZipFile(training) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"training_state.pt is truncated or damaged ({training.stat().st_size} bytes)"
    return None


def _epoch(folder: Path) -> int:
    return int(json.loads((folder / "trial_state.json").read_text())["epoch"])


def resume_folder(checkpoint) -> tuple[Path | None, str | None]:
    """The local folder to resume a trial from, given the Tune checkpoint it was restored with (or None).

    Returns:
        ``(folder, note)``: ``folder`` is the checkpoint downloaded when it is whole; else the newest whole one
        of the same trial (its ``checkpoint_*`` siblings on the storage), else None (start from scratch).
        ``note`` says what was skipped and why, None when the given checkpoint was used.
    """
    if checkpoint is None:
        return None, None
    from ray import tune

    first = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="cxr-resume-")))
    problem = problems(first)
    if problem is None:
        return first, None
    skipped = [f"{Path(checkpoint.path).name} is damaged ({problem})"]
    fs, trial_dir = checkpoint.filesystem, str(Path(checkpoint.path).parent)
    import pyarrow.fs

    try:
        siblings = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir))
    except OSError as exc:
        siblings = []
        skipped.append(f"the trial's other checkpoints cannot be listed ({exc})")
    names = sorted(
        (i.path for i in siblings if i.type == pyarrow.fs.FileType.Directory and Path(i.path).name.startswith(
            "checkpoint_") and Path(i.path).name != Path(checkpoint.path).name),
        key=lambda p: Path(p).name,
        reverse=True,
    )  # fmt: skip
    for path in names:
        if Path(path).name > Path(checkpoint.path).name:
            continue  # newer than the one Tune restored: not part of the state Tune saved
        folder = Path(tune.Checkpoint(path, filesystem=fs).to_directory(tempfile.mkdtemp(prefix="cxr-resume-")))
        problem = problems(folder)
        if problem is None:
            note = "; ".join(skipped) + f"; resumed from {Path(path).name} (epoch {_epoch(folder)})"
            return folder, note
        skipped.append(f"{Path(path).name} is damaged ({problem})")
    return None, "; ".join(skipped) + "; no intact checkpoint left: the trial restarted from scratch"
