"""Bad input through the real command-line entry points (docs/errors.md, one test per row), and what must never
happen: output lost, code executed from input, patient data copied into results.

Every refused input must end with exit code 2 and one last stderr line ``error: ...`` that names the problem and
the fix, with no traceback, and must leave earlier output byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest

from cxr_core.errors import CxrError
from cxr_core.testing import two_arm_space
from tests.conftest import REPO

# ------------------------------------------------------------------------------------------------ helpers


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m ARGS`` from the checkout, as a user runs it (offline: the environment of the tests)."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def assert_refused(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit code 2, no traceback, and a last stderr line ``error: ...`` holding every phrase; returns it."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for phrase in phrases:
        assert phrase in last, (phrase, last)
    return last


def hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones too: a leftover temp file shows)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def png_header(width: int, height: int) -> bytes:
    """A valid PNG that claims ``width x height`` pixels and holds almost nothing: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def space_text(splits, root, *, epochs: int = 2, concurrent: int = 0) -> str:
    """The tests' two-arm space (:func:`cxr_core.testing.two_arm_space`); the rows below edit its text."""
    return two_arm_space(splits, root, epochs=epochs, max_concurrent_trials=concurrent)


# ----------------------------------------------------------------------------------- search space rows

# (row id, edit of the space text (old, new) or None, extra arguments, phrases of the message)
SWEEP_ROWS = [
    (
        "malformed_yaml",
        ("name: fft", "name: [unclosed"),
        [],
        ["malformed YAML in", "at line", "fix the syntax"],
    ),
    (
        "unknown_key",
        ("epochs: 2", "epochz: 2"),
        [],
        ["unknown key `train.epochz`", "valid keys here: batch_size"],
    ),
    ("wrong_type", ("epochs: 2", "epochs: two"), [], ["`train.epochs` must be int, got 'two' (str)"]),
    (
        "empty_choice",
        ("r: 4", "r: {choice: []}"),
        [],
        ["`arms[1].lora.r.choice` = []", "give at least one value"],
    ),
    (
        "unknown_method",
        ("method: fft", "method: sgd"),
        [],
        ["`method` must be one of fft, lora, ia3, got 'sgd'"],
    ),
    ("rank_below_one", ("r: 4", "r: 0"), [], ["arm lora: `lora.r` must be a positive integer, got 0"]),
    (
        "lr_not_positive",
        ("lr: 1.0e-3", "lr: 0.0"),
        [],
        ["arm fft: `train.lr` must be a positive number, got 0.0"],
    ),
    (
        "gpu_share_above_one",
        ("resources: {{cpu: 1}}".replace("{{", "{").replace("}}", "}"), "resources: {cpu: 1, gpu: 1.5}"),
        [],
        ["`resources.gpu` must be a share in [0, 1] or a whole number, got 1.5"],
    ),
    (
        "schedule_unknown",
        ("epochs: 2", "epochs: 2, schedule: linear"),
        [],
        ["arm fft: `train.schedule` must be one of cosine, constant, got 'linear'"],
    ),
    (
        "freeze_unknown",
        ("train: {lr: 1.0e-3}", "train: {lr: 1.0e-3}\n    fft: {freeze: both}"),
        [],
        ["arm fft: `fft.freeze` must be one of none, vision, text, got 'both'"],
    ),
    (
        "scheduler_type_unknown",
        ("max_concurrent_trials: 0", "max_concurrent_trials: 0\nscheduler: {type: hyperband}"),
        [],
        ["`scheduler.type` = 'hyperband': unknown scheduler; use one of fifo, asha, median"],
    ),
    (
        "scheduler_key_not_taken",
        ("max_concurrent_trials: 0", "max_concurrent_trials: 0\nscheduler: {type: median, max_t: 5}"),
        [],
        [
            "`scheduler.max_t` = 5: the median scheduler does not take this key",
            "valid keys for median: type, grace_",
        ],
    ),
    (
        "asha_grace_period_above_max_t",
        (
            "max_concurrent_trials: 0",
            "max_concurrent_trials: 0\nscheduler: {type: asha, grace_period: 4, max_t: 2}",
        ),
        [],
        ["`scheduler.grace_period` = 4: must be at most max_t (2)"],
    ),
    (
        "gpu_required_without_cuda",
        ("resources: {{cpu: 1}}".replace("{{", "{").replace("}}", "}"), "resources: {cpu: 1, gpu: 1}"),
        ["--require-gpu"],
        [
            "arm fft (resources.gpu = 1), arm lora (resources.gpu = 1): GPU required (--require-gpu) but CUDA is "
            "unavailable on this machine (torch",
            "set resources.gpu = 0, or drop --require-gpu",
        ],
    ),
    (
        "unknown_target_module",
        ("target_modules: all_linear", "target_modules: [query, qproj]"),
        [],
        ["target module 'qproj' matches no Linear layer", "valid names", "self_attn.q_proj"],
    ),
    (
        "unknown_ia3_preset",
        (
            "method: lora\n    lora: {r: 4, target_modules: all_linear}",
            "method: ia3\n    ia3: {target_modules: attention}",
        ),
        [],
        [
            "arm lora: `ia3.target_modules`: unknown target preset 'attention'; use one of vision, text, all or a list"
        ],
    ),
    (
        "ia3_target_module_unknown",
        (
            "method: lora\n    lora: {r: 4, target_modules: all_linear}",
            "method: ia3\n    ia3: {target_modules: [key, qproj]}",
        ),
        [],
        ["arm lora: `ia3.target_modules`: target module 'qproj' matches no Linear layer", "attention.self.key"],
    ),
    (
        "code_key",
        ("train: {lr: 1.0e-3}", "train: {lr: {sample_from: 'lambda spec: 1e-3'}}"),
        [],
        ["`arms[0].train.lr.sample_from`", "code is never evaluated", "use grid_search, choice"],
    ),
    (
        "python_tag",
        ("name: t", "name: t\ndescription: !!python/object/apply:os.system ['touch {tmp}/PWNED']"),
        [],
        ["refused YAML in", "python/object/apply:os.system", "no !!python or other object tags"],
    ),
    (
        "data_root_missing",
        ("image_root: {root}", "image_root: {tmp}/no-such-root"),
        [],
        ["`data.image_root` =", "no-such-root", "does not exist; set it to the MIMIC-CXR-JPG root"],
    ),
    (
        "model_folder_unknown",
        ("model: embedded", "model: {tmp}/no-such-model"),
        [],
        ["`model`: model folder", "no-such-model holds no config.json", "a hub id such as microsoft/git-base"],
    ),
    (
        "model_grid_entry_unknown",
        ("model: embedded", "model: {grid_search: [embedded, embedded-large]}"),
        [],
        [
            "`model` grid_search entry 'embedded-large' of ['embedded', 'embedded-large']: unknown embedded model "
            "'embedded-large'; use one of embedded, embedded-small"
        ],
    ),
    (
        "hub_model_not_cached",
        None,
        ["--set", "model=nobody/no-such-git"],
        ["model 'nobody/no-such-git' is neither a model folder nor a hub model", "huggingface-cli download"],
    ),
    (
        "storage_without_filesystem",
        None,
        ["--storage", "az://container/results"],
        ["storage az://container/results: no filesystem for az:// is installed", "local or NFS path"],
    ),
    ("csv_path_escapes_root", None, ["ESCAPE"], ["image path '../../../../etc/passwd' leaves the image root"]),
    ("results_name_exists", None, ["--name", "old"], ["old exists already; pass --resume to continue it"]),
    ("dashboard_packages_missing", None, ["--dashboard"], ["--dashboard needs the Ray dashboard's packages"]),
]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _dashboard_missing() -> bool:
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is not None


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """A results root that already holds an earlier sweep's output: no refused command may touch it."""
    rr = tmp_path_factory.mktemp("errors") / "rr"
    (rr / "old").mkdir(parents=True)
    (rr / "old" / "experiment_state-earlier.json").write_text('{"earlier": true}')
    (rr / "old" / "report").mkdir()
    (rr / "old" / "report" / "summary.md").write_text("an earlier report\n")
    return rr


@pytest.mark.parametrize(("row", "edit", "extra", "phrases"), SWEEP_ROWS, ids=[r[0] for r in SWEEP_ROWS])
def test_sweep_refuses_bad_input(row, edit, extra, phrases, small_data, storage, tmp_path):
    if row == "dashboard_packages_missing" and not _dashboard_missing():
        pytest.skip("the dashboard's packages are installed: test_dashboard_binds_to_localhost covers it")
    if row == "gpu_required_without_cuda" and _cuda():
        pytest.skip(
            "CUDA is available here: the sweep would train (tests/test_gpu_packing.py refuses on a cluster)"
        )
    root, splits = small_data
    text = space_text(splits, root)
    if edit is not None:
        old, new = (part.replace("{root}", str(root)).replace("{tmp}", str(tmp_path)) for part in edit)
        assert old in text
        text = text.replace(old, new)
    if extra == ["ESCAPE"]:  # a split folder whose CSV has a path column that climbs out of the image root
        bad = tmp_path / "splits"
        shutil.copytree(splits, bad)
        frame = pd.read_csv(bad / "train_split.csv")
        frame["path"] = "files/p10/x.jpg"
        frame.loc[3, "path"] = "../../../../etc/passwd"
        frame.to_csv(bad / "train_split.csv", index=False)
        text, extra = text.replace(str(splits), str(bad)), []
    space = tmp_path / "space.yaml"
    space.write_text(text)
    before = hashes(storage)
    proc = cli("jobs.sweep", str(space), "--storage", str(storage), "--num-cpus", "1", *extra)
    names_the_file = row not in (
        "storage_without_filesystem",
        "results_name_exists",
        "dashboard_packages_missing",
    )
    assert_refused(proc, *phrases, *([str(space)] if names_the_file else []))
    assert hashes(storage) == before and sorted(p.name for p in storage.iterdir()) == ["old"]
    assert not (tmp_path / "PWNED").exists()  # the !!python tag was refused, not run


def test_dashboard_binds_to_localhost():
    """With the dashboard's packages installed, --dashboard serves on 127.0.0.1 only (else the row above)."""
    if _dashboard_missing():
        pytest.skip("the Ray dashboard's packages are not installed: the CLI refuses --dashboard (row above)")
    code = (
        "from cxr_core.tune_runner import init_ray; import ray; init_ray(num_cpus=1, dashboard=True); "
        "print(ray._private.worker.global_worker.node.address_info['webui_url'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("127.0.0.1:")


# -------------------------------------------------------------------------------------- prepare rows


def _copy_root(src: Path, dst: Path, *, files: bool) -> Path:
    dst.mkdir(parents=True)
    for table in src.glob("*.csv*"):
        shutil.copy(table, dst / table.name)
    if files:
        shutil.copytree(src / "files", dst / "files")
    else:
        (dst / "files").symlink_to(src / "files")
    return dst


def _edit_labels(root: Path, edit) -> None:
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    frame = pd.read_csv(path)
    edit(frame)
    frame.to_csv(path, index=False)


def _set_edema(frame: pd.DataFrame, value) -> None:
    frame["Edema"] = frame["Edema"].astype(object)
    frame.loc[3, "Edema"] = value


def _three_patients_frontal(root: Path, splits: Path) -> None:
    """Only three patients keep frontal (PA/AP) views: the view filter leaves too few for three splits."""
    keep = pd.read_csv(splits / "train_split.csv")["subject_id"].drop_duplicates().head(3)
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    meta.loc[~meta["subject_id"].astype(int).isin(keep), "ViewPosition"] = "LATERAL"
    meta.to_csv(path, index=False)


def _corrupt_images(root: Path, how) -> None:
    for jpg in (root / "files").rglob("*.jpg"):
        how(jpg)


DECODE = ["--check-images", "decode", "--image-policy", "error", "--workers", "1"]
BAD_FILE = "sampled images are missing or unreadable, first:"
PREPARE_ROWS = [
    ("mimic_root_missing", None, [], ["MIMIC root", "does not exist; pass --mimic-root the folder holding"]),
    (
        "label_columns_missing",
        lambda r, s: _edit_labels(r, lambda f: f.drop(columns=f.columns[2:], inplace=True)),
        [],
        ["chexpert.csv.gz: missing columns Atelectasis, Cardiomegaly", "the 14 CheXpert label columns"],
    ),
    (
        "label_value_outside_set",
        lambda r, s: _edit_labels(r, lambda f: _set_edema(f, 2.0)),
        [],
        ["label Edema has value 2.0 in row 5", "label values must be 1.0, 0.0, -1.0 or blank"],
    ),
    (
        "view_filter_keeps_nothing",
        None,
        ["--views", "XX"],
        ["no images left after keeping views XX and existing files", "check the view filter (--views)"],
    ),
    (
        "split_left_empty",
        _three_patients_frontal,
        [],
        ["only 3 patients left after the filters and sampling, so a split would be empty", "raise --per-label"],
    ),
    (
        "image_missing",
        lambda r, s: _corrupt_images(r, Path.unlink),
        ["--image-policy", "error"],
        [BAD_FILE, "(missing file); fix the files, or use --image-policy skip"],
    ),
    (
        "image_zero_bytes",
        lambda r, s: _corrupt_images(r, lambda p: p.write_bytes(b"")),
        DECODE,
        [BAD_FILE, "(unreadable: cannot identify image file", "--image-policy skip"],
    ),
    (
        "image_truncated",
        lambda r, s: _corrupt_images(r, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])),
        DECODE,
        [BAD_FILE, "(unreadable: image file is truncated", "--image-policy skip"],
    ),
    (
        "image_not_an_image",
        lambda r, s: _corrupt_images(r, lambda p: p.write_text("subject_id,study_id\n")),
        DECODE,
        [BAD_FILE, "(unreadable: cannot identify image file", "--image-policy skip"],
    ),
    (
        "image_oversized",
        lambda r, s: _corrupt_images(r, lambda p: p.write_bytes(png_header(40_000, 40_000))),
        DECODE,
        [BAD_FILE, "oversized image (decompression-bomb guard): Image size (1600000000 pixels)"],
    ),
    (
        "fractions_not_summing_to_one",
        None,
        ["--fractions", "0.5,0.2,0.2"],
        ["--fractions must be three positive train,val,test shares summing to 1, got 0.5,0.2,0.2"],
    ),
    ("fractions_not_numbers", None, ["--fractions", "half,rest"], ["--fractions must be three numbers"]),
]


@pytest.mark.parametrize(("row", "make", "extra", "phrases"), PREPARE_ROWS, ids=[r[0] for r in PREPARE_ROWS])
def test_prepare_refuses_bad_input(row, make, extra, phrases, small_data, tmp_path):
    src, splits = small_data
    root = tmp_path / "mimic"
    if row == "mimic_root_missing":
        pass
    elif row.startswith("fractions_"):
        root = src
    else:
        _copy_root(src, root, files=row.startswith("image_"))
        if make is not None:
            make(root, splits)
    out = tmp_path / "out"
    shutil.copytree(splits, out)  # an earlier good run's output
    before = hashes(out)
    proc = cli("jobs.prepare_data", "--mimic-root", str(root), "--out", str(out), "--per-label", "15", *extra)
    assert_refused(proc, *phrases)
    assert hashes(out) == before  # nothing overwritten, no half-written or temporary file left


def test_bad_images_under_skip_are_counted_in_the_manifest(small_data, tmp_path):
    """The same bad files under the default policy: skipped, each counted with its reason, never a crash."""
    from cxr_core.prepare import prepare_splits

    src, _ = small_data
    root = _copy_root(src, tmp_path / "mimic", files=True)
    damage = {
        "missing file": Path.unlink,
        "cannot identify image file": lambda p: p.write_bytes(b""),
        "runcated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),
        "decompression-bomb guard": lambda p: p.write_bytes(png_header(40_000, 40_000)),
    }
    for i, jpg in enumerate(sorted((root / "files").rglob("*.jpg"))):
        if i % 5 < 4:  # one in five stays good
            list(damage.values())[i % 5](jpg)
    manifest = prepare_splits(root, tmp_path / "out", per_label=15, check_images="decode", workers=1)
    reasons = [item["reason"] for item in manifest["dropped_images"]]
    for reason in damage:
        assert any(reason in r for r in reasons), (reason, reasons[:8])
    bad = manifest["dropped"]["missing_file"] + manifest["dropped"]["unreadable_file"]
    assert bad >= 4 and sum(manifest["rows"].values()) == manifest["counts"]["sampled"] > 0


def test_failed_prepare_leaves_the_previous_output(small_data, tmp_path, monkeypatch):
    """A failure while the new files are written (here: the third CSV) replaces nothing and leaves no temp file."""
    import cxr_core.prepare as prepare

    root, splits = small_data
    out = tmp_path / "out"
    shutil.copytree(splits, out)
    before = hashes(out)
    calls = []
    real = prepare.seed_frame

    def failing(frame):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(frame)

    monkeypatch.setattr(prepare, "seed_frame", failing)
    with pytest.raises(OSError, match="No space left"):
        prepare.prepare_splits(root, out, per_label=20, seed=1)
    assert len(calls) == 3 and hashes(out) == before


# -------------------------------------------------------------------------------------- results rows


@pytest.mark.parametrize(
    ("row", "phrases"),
    [
        ("results_missing", ["results folder", "does not exist; pass ray_results/NAME of a sweep"]),
        ("results_empty", ["holds no Tune experiment (no experiment_state-*.json)", "ray_results/NAME"]),
        ("results_starting", ["the sweep has started but saved no experiment state yet", "wait a few seconds"]),
        ("results_uri_without_filesystem", ["no filesystem for az:// is installed", "local or NFS path"]),
    ],
)
def test_analyze_refuses_bad_results(row, phrases, tmp_path):
    folder = tmp_path / "results"
    if row != "results_missing":
        folder.mkdir()
    if row == "results_starting":  # what a sweep's folder holds in its first seconds
        (folder / "tuner.pkl").write_bytes(b"")
        (folder / ".validate_storage_marker").write_bytes(b"")
    target = "az://container/results" if row == "results_uri_without_filesystem" else str(folder)
    before = hashes(tmp_path)
    assert_refused(cli("jobs.analyze", target), *phrases)
    assert hashes(tmp_path) == before  # no report folder, nothing written


@pytest.mark.parametrize(
    ("row", "args", "phrases"),
    [
        ("margin_negative", ["--margin", "-0.01"], ["--margin must be >= 0, got -0.01"]),
        ("resamples_too_few", ["--resamples", "10"], ["--resamples must be at least 100", "got 10"]),
    ],
)
def test_analyze_refuses_bad_options(row, args, phrases, tmp_path):
    before = hashes(tmp_path)
    assert_refused(cli("jobs.analyze", str(tmp_path), *args), *phrases)
    assert hashes(tmp_path) == before


# ------------------------------------------------------------------------- export and predict rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "phrases"),
    [
        (
            "export_without_checkpoints",
            ["holds no checkpoint of configuration '", "/checkpoint_00000", "is not there): none was saved, or",
             "copy the whole results folder, checkpoints included"],
        ),
        (
            "export_unknown_config_id",
            ["has no configuration 'fft lr=9'", "pass --config-id one of: 'fft lr=0.001', 'lora:all_linear r=4"],
        ),
        (
            "predict_folder_without_images",
            ["image folder", "holds no image (.jpg, .jpeg or .png, searched recursively)", "JPEG or PNG"],
        ),
    ],
)  # fmt: skip
def test_export_and_predict_refuse_bad_input(row, phrases, seeds_sweep, tmp_path):
    results, out = seeds_sweep, tmp_path / "export"
    if row == "export_without_checkpoints":  # results copied without their checkpoint_* folders
        results = tmp_path / "results"
        shutil.copytree(seeds_sweep, results, ignore=shutil.ignore_patterns("checkpoint_*"))
    if row == "predict_folder_without_images":
        (tmp_path / "scans").mkdir()
        (tmp_path / "scans" / "notes.txt").write_text("no image here")
        from cxr_core.tiny_git import embedded_model_path

        proc = cli("jobs.predict", str(embedded_model_path()), str(tmp_path / "scans"), "--out", str(out))
    else:
        before = hashes(results)
        extra = ["--config-id", "fft lr=9"] if row == "export_unknown_config_id" else []
        proc = cli("jobs.export", str(results), *extra, "--out", str(out))
        assert hashes(results) == before
    assert_refused(proc, *phrases)
    assert not out.exists()


# ------------------------------------------------------------- a real sweep: live, interrupted, resumed


@pytest.fixture(scope="module")
def live(small_data, tmp_path_factory):
    """A real sweep, analysed while it runs, stopped with Ctrl-C, then resumed with the command it printed.

    Trials run one at a time (4 epochs each), so the second is still pending when the first reports.
    """
    root, splits = small_data
    tmp = tmp_path_factory.mktemp("live")
    space = tmp / "live.yaml"
    space.write_text(space_text(splits, root, epochs=4, concurrent=1))
    rr, exp = tmp / "rr", tmp / "rr" / "live"
    args = [sys.executable, "-m", "jobs.sweep", str(space), "--name", "live", "--storage", str(rr), "--quiet"]
    with open(tmp / "sweep.out", "w") as out, open(tmp / "sweep.err", "w") as err:  # files: a pipe could fill
        sweep = subprocess.Popen([*args, "--num-cpus", "2"], cwd=REPO, stdout=out, stderr=err)
        deadline = time.time() + 600

        def reported() -> bool:  # a trial has reported, and the saved experiment state knows that trial
            states = [p.read_text() for p in exp.glob("experiment_state-*.json")]
            return bool(list(exp.glob("*/result.json"))) and any("trial_id" in s for s in states)

        while time.time() < deadline and not reported() and sweep.poll() is None:
            time.sleep(0.5)
        analysed = cli("jobs.analyze", str(exp))
        report = hashes(exp / "report") if (exp / "report").is_dir() else {}
        sweep.send_signal(signal.SIGINT)
        sweep.wait(timeout=300)
    out, err = (tmp / "sweep.out").read_text(), (tmp / "sweep.err").read_text()
    hint = err.strip().splitlines()[-1] if err.strip() else ""
    command = shlex.split(hint.split("continue with: ", 1)[-1])
    assert command[:3] == ["python", "-m", "jobs.sweep"], (sweep.returncode, err[-3000:])
    resumed = subprocess.run([sys.executable, *command[1:], "--num-cpus", "2", "--quiet"], cwd=REPO,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    return {"exp": exp, "splits": splits, "root": root, "analysed": analysed, "report": report,
            "interrupted": (sweep.returncode, out, err), "hint": hint, "resumed": resumed}  # fmt: skip


@pytest.mark.slow
def test_analysis_of_a_running_sweep_says_it_is_partial(live):
    proc = live["analysed"]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "note: this report is partial:" in proc.stdout and re.search(r"PENDING|RUNNING", proc.stdout)
    summary = (live["exp"] / "report" / "summary.md").read_text()
    assert re.search(r"^\d+ trials \([^)]*\b(PENDING|RUNNING)\b", summary, re.M), summary[:400]


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_resume_finishes(live):
    code, _, err = live["interrupted"]
    assert code == 130 and "Traceback" not in err
    assert live["hint"] == (
        f"interrupted; continue with: python -m jobs.sweep {live['exp'].parent.parent / 'live.yaml'} "
        f"--name live --storage {live['exp'].parent} --resume"
    )
    resumed = live["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 trials, 0 errored, 0 unfinished" in resumed.stdout
    from cxr_core.tune_runner import results_frame

    epochs = results_frame(live["exp"])
    assert (epochs.groupby("trial_id")["status"].first() == "TERMINATED").all()
    assert epochs.groupby("trial_id")["epoch"].apply(lambda e: sorted(e.dropna().unique())).map(len).eq(4).all()


@pytest.mark.slow
def test_unknown_metric_leaves_the_previous_report(live):
    before = hashes(live["exp"] / "report")
    assert before == live["report"] and "summary.md" in before
    proc = cli("jobs.analyze", str(live["exp"]), "--metric", "nope")
    assert_refused(proc, "metric 'nope' is not in the results of", "pass --metric one of: bleu1")
    assert hashes(live["exp"] / "report") == before


@pytest.mark.slow
def test_failed_analysis_leaves_the_previous_report(live, monkeypatch):
    from cxr_core import plots
    from cxr_core.study_report import write_report

    before = hashes(live["exp"] / "report")

    def broken(*args, **kwargs):
        raise RuntimeError("a plotting bug")

    monkeypatch.setattr(plots, "draw_all", broken)
    with pytest.raises(RuntimeError, match="a plotting bug"):
        write_report(live["exp"])
    assert hashes(live["exp"] / "report") == before
    assert not [p for p in live["exp"].iterdir() if p.name.startswith(".report")]  # no half-written folder


@pytest.mark.slow
def test_state_file_being_written_is_named(live, tmp_path):
    """A sweep's experiment_state caught mid-write (here: cut short in a copy) is named, not a traceback."""
    copy = tmp_path / "copy"
    shutil.copytree(live["exp"], copy, ignore=shutil.ignore_patterns("checkpoint_*", "report"))
    state = max(copy.glob("experiment_state-*.json"))  # the newest: the one Tune reads
    state.write_bytes(state.read_bytes()[:300])
    before = hashes(copy)
    assert_refused(cli("jobs.analyze", str(copy)), "Tune cannot read the sweep's experiment_state-*.json",
                   "run the command again in a few seconds")  # fmt: skip
    assert hashes(copy) == before


# ----------------------------------------------------------------------- nothing executed, nothing copied


@pytest.mark.slow
def test_no_patient_data_in_the_results(live):
    """Results hold identifiers and metrics: no source image bytes and no report sentence, except the constant
    baseline's text (the most frequent training report, a label template shared by many images, documented)."""
    from cxr_core.dataset import split_image_paths
    from cxr_core.labels import LABELS
    from cxr_core.mini_report import sentence
    from cxr_core.prepare import read_split

    sentences = [sentence(label, v).lower() for label in LABELS for v in (1.0, 0.0, -1.0)]
    baseline = json.loads((live["exp"] / "report" / "baseline.json").read_text())["report"].lower()
    needles = []
    for split in ("train", "val", "test"):
        for path in split_image_paths(read_split(live["splits"], split), live["root"]):
            data = Path(path).read_bytes()
            needles.append(data[len(data) // 2 : len(data) // 2 + 64])  # 64 bytes of entropy-coded pixels
    files = [p for p in live["exp"].rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        data = path.read_bytes()
        assert not [n for n in needles if n in data], path
        text = data.decode("latin-1").lower().replace(baseline, "")
        assert not [s for s in sentences if s in text], path


@pytest.mark.slow
def test_checkpoints_hold_only_weights_and_plain_state(live):
    import torch

    kinds = {p.name for p in live["exp"].glob("*/checkpoint_*/**/*") if p.is_file()}
    assert kinds <= {"model.safetensors", "adapter_model.safetensors", "config.json", "generation_config.json",
                     "adapter_config.json", "README.md", "trial_state.json", "training_state.pt"}, kinds  # fmt: skip
    for state in live["exp"].glob("*/checkpoint_*/training_state.pt"):
        torch.load(state, weights_only=True)  # tensors and numbers only: loads without unpickling code


def test_no_code_is_loaded_from_input():
    """Static guard: weights-only torch.load, safe YAML, no remote code, no eval/exec, no pickle of our own."""
    import yaml

    from cxr_core import space

    assert issubclass(space._Loader, yaml.SafeLoader)
    for path in [*REPO.glob("cxr_core/**/*.py"), *REPO.glob("jobs/*.py"), *REPO.glob("bench/*.py")]:
        text = path.read_text()
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(
            r"yaml\.(unsafe_load|full_load)|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)", text
        )
        assert "trust_remote_code=True" not in text, path
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), path
        assert not re.search(r"\bpickle\.loads?\(", text), path


def test_names_and_overrides_stay_in_their_place(tmp_path):
    from cxr_core.space import check_name

    for bad in ("../elsewhere", "a/b", "..", "", "x\ny"):
        with pytest.raises(CxrError, match="not a plain folder name"):
            check_name(bad)
    assert check_name("demo-2") == "demo-2"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # every CLI run above was offline
