"""Faults from the environment (docs/faults.md, one test per row of its table): a cluster that does not answer or
refuses the driver, a storage that cannot be written or reached, two drivers on one sweep, SIGTERM, a damaged
checkpoint at a resume, a damaged image cache, a full disk, a worker node lost mid-trial.

Every refusal must end with exit code 2 and one last stderr line ``error: ...`` (no traceback) within its time
bound; every recovery must finish the sweep with each epoch of each trial reported once. Servers, clusters and
file systems here are real and local (127.0.0.1, ``ray.cluster_utils.Cluster``, tmpfs); each test stops what it
started.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from cxr_core.errors import CxrError
from tests.conftest import REPO
from tests.test_errors import assert_refused, hashes

SWEEP = [sys.executable, "-m", "jobs.sweep"]

SPACE = """
name: {name}
max_failures: {max_failures}
defaults:
  model: embedded
  data: {{split_dir: {splits}, image_root: {root}, max_train: {max_train}, max_val: 8}}
  train: {{epochs: {epochs}, batch_size: 16, num_threads: 1}}
  evaluation: {{max_new_tokens: 8}}
  resources: {{cpu: 1}}
  keep_checkpoints: {epochs}
arms:
  - name: lora
    method: lora
    lora: {{r: 4, target_modules: text}}
    train: {{lr: 5.0e-3}}
"""


def space_file(folder: Path, small_data, *, name="f", epochs=3, max_train=16, max_failures=0) -> Path:
    root, splits = small_data
    path = folder / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, splits=splits, root=root, epochs=epochs, max_train=max_train,
                                 max_failures=max_failures))  # fmt: skip
    return path


def run(cmd, *, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def timed(cmd, **kw) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = run(cmd, **kw)
    return proc, time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """127.0.0.1:PORT that accepts connections and never says a word (a hung service, a black-holed proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def http_server():
    """127.0.0.1:PORT of a plain HTTP/1 server (what the dashboard's port 8265 or a web proxy would be)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _mount(folder: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0  # fmt: skip


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write: mode 555, or for root (whom modes do not stop) a read-only tmpfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount(folder, "ro,size=1m"):
        pytest.skip("root without permission to mount a tmpfs: no folder is read-only for this user")
    yield folder
    _umount(folder)


# ------------------------------------------------------------------------------------ 1. the cluster's address

ADDRESS_ROWS = ["address_nothing_answers", "address_not_a_ray_head_http", "address_not_a_ray_head_silent"]


@pytest.mark.parametrize("row", ADDRESS_ROWS)
def test_sweep_refuses_an_address_that_is_not_a_ray_head(row, request, small_data, tmp_path):
    """Refused in about the time bound (here 3 s via $CXR_CONNECT_TIMEOUT), before the search space is even
    read, and writing nothing."""
    if row == "address_nothing_answers":
        port, phrases = free_port(), ["nothing answers there (Connection refused, tried for 3 s)",
                                      "--connect-timeout SECONDS"]  # fmt: skip
    elif row == "address_not_a_ray_head_http":
        port = request.getfixturevalue("http_server")
        phrases = ["is not a Ray head: it answered as an HTTP/1 web server", "default port 6379"]
    else:
        port = request.getfixturevalue("silent_server")
        phrases = ["is not a Ray head: it accepted the connection but sent nothing back"]
    space = space_file(tmp_path, small_data)
    storage = tmp_path / "rr"
    proc, seconds = timed([*SWEEP, str(space), "--storage", str(storage), "--address", f"127.0.0.1:{port}"],
                          env={"CXR_CONNECT_TIMEOUT": "3"})  # fmt: skip
    assert_refused(proc, f"--address 127.0.0.1:{port}", *phrases)
    assert seconds < 3 + 40, seconds  # a hang lasts minutes; start-up on a loaded machine can take 10-20 s
    assert not storage.exists()


def test_connect_timeout_default_and_overrides(monkeypatch):
    from cxr_core.faults import DEFAULT_TIMEOUT_S, connect_timeout

    monkeypatch.delenv("CXR_CONNECT_TIMEOUT", raising=False)
    assert connect_timeout() == DEFAULT_TIMEOUT_S == 20.0  # + start-up: an error within 30 s by default
    monkeypatch.setenv("CXR_CONNECT_TIMEOUT", "120")
    assert connect_timeout() == 120.0 and connect_timeout(7) == 7.0  # the flag wins over the variable
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("CXR_CONNECT_TIMEOUT", bad)
        with pytest.raises(CxrError, match="CXR_CONNECT_TIMEOUT must be a"):
            connect_timeout()


# ------------------------------------------------------------------------------------------- 2. the storage


def test_sweep_refuses_a_read_only_storage(read_only_folder, small_data, tmp_path):
    space = space_file(tmp_path, small_data)
    before = hashes(read_only_folder)
    proc = run([*SWEEP, str(space), "--storage", str(read_only_folder / "rr"), "--num-cpus", "1"])
    assert_refused(proc, f"storage {read_only_folder / 'rr'} cannot be written", "pass --storage a folder")
    assert hashes(read_only_folder) == before


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_sweep_gives_up_on_a_storage_that_does_not_answer(scheme, silent_server, small_data, tmp_path):
    """pyarrow's cloud clients retry for many minutes; the probe gives up after the bound and the process ends
    at once (pyarrow's S3 client would otherwise block the exit too)."""
    uri = f"{scheme}://bucket/rr?endpoint_override=127.0.0.1:{silent_server}&scheme=http"
    space = space_file(tmp_path, small_data)
    proc, seconds = timed([*SWEEP, str(space), "--storage", uri, "--connect-timeout", "3"])
    assert_refused(proc, f"storage {uri} did not answer within 3 s", "check the bucket name, the credentials")
    assert seconds < 3 + 40, seconds  # a hang lasts minutes; start-up on a loaded machine can take 10-20 s


def test_analyze_gives_up_on_a_storage_that_does_not_answer(silent_server):
    uri = f"gs://bucket/rr/demo?endpoint_override=127.0.0.1:{silent_server}&scheme=http"
    proc, seconds = timed([sys.executable, "-m", "jobs.analyze", uri], env={"CXR_CONNECT_TIMEOUT": "3"})
    assert_refused(proc, f"storage {uri} did not answer within 3 s", "$CXR_CONNECT_TIMEOUT=SECONDS")
    assert seconds < 3 + 40, seconds  # a hang lasts minutes; start-up on a loaded machine can take 10-20 s


# ------------------------------------------------------------------------------ 5. one driver per sweep


def test_driver_lock_refuses_a_second_driver_and_dies_with_a_killed_one(tmp_path):
    from cxr_core.driver_lock import acquire

    first = acquire(str(tmp_path), "s")
    with pytest.raises(
        CxrError, match=rf"another driver is running the sweep {tmp_path}/s \(pid {os.getpid()} on"
    ):
        acquire(str(tmp_path), "s")
    first.release()
    assert not (tmp_path / ".s.driver-lock").exists()
    # A holder killed with SIGKILL (no clean-up at all) leaves the file but not the lock.
    code = "import sys, time; from cxr_core.driver_lock import acquire; acquire(sys.argv[1], 's'); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CxrError, match=rf"pid {holder.pid} on host"):
            acquire(str(tmp_path), "s")
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".s.driver-lock").exists()
    acquire(str(tmp_path), "s").release()  # taken at once, no clean-up needed


def test_uri_lock_expires_without_heartbeat(tmp_path):
    """URIs have no locks: a heartbeat file. A live holder refuses; one that stopped beating is taken over."""
    from cxr_core.driver_lock import acquire

    uri = f"file://{tmp_path}"
    first = acquire(uri, "s", settle_s=0, heartbeat_s=0.2, stale_s=1.0)
    time.sleep(0.5)  # a few beats
    with pytest.raises(CxrError, match=r"another driver is running the sweep .*last heartbeat 0 s ago"):
        acquire(uri, "s", settle_s=0, heartbeat_s=0.2, stale_s=1.0)
    first._stop.set()  # the holder dies: no more beats, no release
    time.sleep(1.2)
    second = acquire(uri, "s", settle_s=0, heartbeat_s=0.2, stale_s=1.0)
    second.release()
    assert not (tmp_path / ".s.driver-lock.json").exists()


# -------------------------------------------------------------------------------- 3. damaged checkpoints


@pytest.fixture(scope="module")
def saved_checkpoint(small_data, tmp_path_factory):
    """A real FFT checkpoint (save_checkpoint of a trained epoch)."""
    import torch

    from cxr_core.config import trial_config
    from cxr_core.trial import MemoryMeter, save_checkpoint, setup

    root, splits = small_data
    cfg = trial_config({"method": "fft", "model": "embedded", "train": {"epochs": 1, "num_threads": 1},
                        "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 8, "max_val": 8,
                                 "cache_dir": "none"}})  # fmt: skip
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000000"
    folder.mkdir()
    save_checkpoint(s, folder, epoch=1)
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated_safetensors": (lambda f: _truncate(f / "model" / "model.safetensors"), "model/model.safetensors is truncated"),
    "truncated_training_state": (lambda f: _truncate(f / "training_state.pt"), "training_state.pt is truncated or damaged"),
    "missing_trial_state": (lambda f: (f / "trial_state.json").unlink(), "trial_state.json is missing"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_is_named(kind, saved_checkpoint, tmp_path):
    from cxr_core.checkpoint_check import problems

    assert problems(saved_checkpoint) is None
    damaged = tmp_path / "checkpoint_000001"
    shutil.copytree(saved_checkpoint, damaged)
    damage, phrase = DAMAGE[kind]
    damage(damaged)
    assert phrase in problems(damaged)


def test_resume_skips_to_the_newest_intact_checkpoint(saved_checkpoint, tmp_path):
    """Through Tune's own Checkpoint on the storage: the damaged newest is skipped, the one before is used."""
    from ray import tune

    from cxr_core.checkpoint_check import resume_folder

    trial = tmp_path / "trial"
    for i, kind in enumerate(["ok", "truncated_training_state", "truncated_safetensors"]):
        folder = trial / f"checkpoint_00000{i}"
        shutil.copytree(saved_checkpoint, folder)
        (folder / "trial_state.json").write_text(json.dumps({"epoch": i + 1}))
        if kind != "ok":
            DAMAGE[kind][0](folder)
    shutil.copytree(saved_checkpoint, trial / "checkpoint_000003")  # newer than Tune's: not part of its state
    folder, note = resume_folder(tune.Checkpoint(str(trial / "checkpoint_000002")))
    assert json.loads((folder / "trial_state.json").read_text())["epoch"] == 1
    assert hashes(folder / "model") == hashes(saved_checkpoint / "model")
    assert note == (
        "checkpoint_000002 is damaged (model/model.safetensors is truncated "
        f"({(trial / 'checkpoint_000002' / 'model' / 'model.safetensors').stat().st_size} of "
        f"{(saved_checkpoint / 'model' / 'model.safetensors').stat().st_size} bytes)); checkpoint_000001 is damaged "
        f"(training_state.pt is truncated or damaged ({(trial / 'checkpoint_000001' / 'training_state.pt').stat().st_size}"
        " bytes)); resumed from checkpoint_000000 (epoch 1)"
    )
    DAMAGE["missing_trial_state"][0](trial / "checkpoint_000000")
    folder, note = resume_folder(tune.Checkpoint(str(trial / "checkpoint_000002")))
    assert folder is None and note.endswith("no intact checkpoint left: the trial restarted from scratch")
    assert resume_folder(tune.Checkpoint(str(trial / "checkpoint_000003")))[1] is None  # an intact one: no note


# --------------------------------------------------------------------------------- 8. the image cache


def _cache_of(tmp_path, small_data):
    from cxr_core.cache import image_cache, pixel_spec
    from cxr_core.dataset import split_image_paths
    from cxr_core.prepare import read_split
    from cxr_core.tiny_git import build_processor

    root, splits = small_data
    paths = split_image_paths(read_split(splits, "val"), root)[:12]
    spec = pixel_spec(build_processor())
    return lambda: image_cache(paths, spec, cache_dir=tmp_path / "cache", workers=1)


CACHE_DAMAGE = {
    "truncated": (lambda e: _truncate(e / "pixels.npy"), "pixels.npy is"),
    "foreign_version": (
        lambda e: (e / "meta.json").write_text(json.dumps({**json.loads((e / "meta.json").read_text()), "version": 0})),
        "written by cache format 0",
    ),
    "foreign_header": (
        lambda e: (e / "pixels.npy").write_bytes(b"\x93NUMPY\x01\x00" + (e / "pixels.npy").read_bytes()[8:].replace(b"'|u1'", b"'<f4'", 1)),
        "pixels.npy holds float32",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(CACHE_DAMAGE))
def test_damaged_image_cache_is_rebuilt_not_read(kind, small_data, tmp_path, caplog):
    from cxr_core.cache import entry_problem

    open_cache = _cache_of(tmp_path, small_data)
    first = open_cache()
    entry, want = first.path, np.array(first.pixels)
    assert first.built and entry_problem(entry, len(want)) is None and not open_cache().built
    del first
    damage, phrase = CACHE_DAMAGE[kind]
    damage(entry)
    assert phrase in entry_problem(entry, len(want))
    with caplog.at_level("WARNING", logger="cxr_core.cache"):
        again = open_cache()
    assert again.built and np.array_equal(np.array(again.pixels), want)  # rebuilt: the same pixels
    assert f"image cache {entry}: {phrase}" in caplog.text and "rebuilding it" in caplog.text


# ---------------------------------------------------------------------------------------- 4. a full disk


def test_a_full_disk_is_named_with_its_free_space(tmp_path):
    """A real ENOSPC (/dev/full) through the guard the trial's writes use."""
    from cxr_core.faults import DiskFull, naming_full_disk

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(DiskFull) as caught:
        with naming_full_disk("/dev/full"), open("/dev/full", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
    text = str(caught.value)
    assert text.startswith("[Errno 28] no space left on device writing /dev/full (")
    assert (
        " MB free of " in text
        and "then continue the sweep with its command plus --resume --retry-errored" in text
    )
    with pytest.raises(ValueError, match="not a disk"), naming_full_disk(tmp_path):
        raise ValueError("not a disk")  # other errors pass through unchanged


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (root only): room for a LoRA sweep's first checkpoints, not for all of them."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not _mount(folder, "size=12m"):
        pytest.skip("needs root and permission to mount a tmpfs: the /dev/full test covers the message")
    yield folder
    _umount(folder)


@pytest.mark.slow
def test_disk_full_fails_the_trial_and_retry_errored_finishes(small_disk, small_data, tmp_path):
    """The sweep's storage fills up at its second checkpoint: the trial fails naming the path and the free space,
    the sweep ends in one line, the first checkpoint stays intact and loadable; once space is back
    ``--resume --retry-errored`` puts back what Tune's driver left cut short and finishes every epoch. A report
    that does not fit is refused the same way."""
    from cxr_core.checkpoint_check import problems
    from cxr_core.config import trial_config
    from cxr_core.trial import load_checkpoint_model
    from cxr_core.tune_runner import results_frame

    space = space_file(tmp_path, small_data, name="full", epochs=3)
    storage, filler = small_disk / "rr", small_disk / "filler"
    cmd = [*SWEEP, str(space), "--storage", str(storage), "--num-cpus", "2", "--quiet"]

    def fill(leave: int) -> None:
        with open(filler, "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(small_disk).free - leave))

    fill(450 * 2**10)  # room for the first epoch only (a LoRA checkpoint of the tiny model: ~0.27 MB, records)
    proc = run(cmd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    trial = next((storage / "full").glob("lora-*"))
    assert (
        f"DiskFull: [Errno 28] no space left on device writing {trial} (0.0 MB free of 12.0 MB)" in proc.stderr
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: storage {storage} is full (0.0 MB free of 12.0 MB)") and last.endswith(
        "then continue with the same command plus --resume --retry-errored"
    )
    first = trial / "checkpoint_000000"
    assert problems(first) is None
    config = trial_config(json.loads((first / "trial_state.json").read_text())["config"])
    load_checkpoint_model(config, first)  # loads: the adapter and its base model
    filler.unlink()  # space is back
    proc = run([*cmd, "--name", "full", "--resume", "--retry-errored"])
    assert proc.returncode == 0 and "1 trials, 0 errored, 0 unfinished" in proc.stdout, proc.stderr[-3000:]
    assert re.search(r"^repaired \d+ file\(s\) of .*experiment_state-", proc.stdout, re.M), proc.stdout
    epochs = results_frame(storage / "full")
    assert sorted(epochs["epoch"].astype(int)) == [1, 2, 3] and (epochs["status"] == "TERMINATED").all()
    fill(64 * 2**10)
    before = hashes(storage / "full")
    report = run([sys.executable, "-m", "jobs.analyze", str(storage / "full")])
    assert_refused(report, f"no space left on device writing the report to {storage / 'full' / 'report'} (",
                   "MB free of 12.0 MB", "pass --out another folder")  # fmt: skip
    assert hashes(storage / "full") == before  # no half-written report left


def test_tune_files_cut_short_are_repaired_from_the_drivers_copy(tmp_path, monkeypatch):
    """What a full storage leaves (Tune's state and a trial's result.json cut short) is put back at --resume from
    the driver's own copies in Ray's session folder; without them, one line says what to do."""
    from cxr_core.faults import repair_experiment_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    stamp = "2026-01-02_03-04-05"
    stage = tmp_path / "ray" / "session_1" / "artifacts" / stamp / "s" / "driver_artifacts"
    exp = tmp_path / "rr" / "s"
    whole = {
        f"experiment_state-{stamp}.json": json.dumps({"trial_data": [["x" * 500]]}).encode(),
        f"basic-variant-state-{stamp}.json": b"\x80\x05state",
        "trial_1/result.json": b'{"epoch": 1}\n{"epoch": 2}\n',
    }
    for rel, data in whole.items():
        for root in (stage, exp):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    (exp / f"experiment_state-{stamp}.json").write_bytes(whole[f"experiment_state-{stamp}.json"][:100])
    (exp / "trial_1" / "result.json").write_bytes(b'{"epoch": 1}\n')
    (exp / "trial_1" / "checkpoint_000000").mkdir()  # the trial's own uploads: not the driver's, left alone
    # A state as long as the driver's but older (it names checkpoint_000000 where the copy names _000001) ...
    old = exp / f"basic-variant-state-{stamp}.json"
    old.write_bytes(b"\x80\x05stale")
    os.utime(old, (time.time() - 60, time.time() - 60))
    (stage / "trial_1" / "params.json").write_bytes(b'{"lr": 0.005}')  # ... as is an older, longer one
    (exp / "trial_1" / "params.json").write_bytes(b'{"lr": 0.00500}')
    os.utime(exp / "trial_1" / "params.json", (time.time() - 60, time.time() - 60))
    # ... is behind; one as long but newer than the driver's copy (a later driver's) is not.
    newer = {"trial_1/progress.csv": (b"epoch\n1\n", b"epoch\n2\n")}
    for rel, (copy, kept) in newer.items():
        (stage / rel).write_bytes(copy)
        (exp / rel).write_bytes(kept)
        os.utime(stage / rel, (time.time() - 60, time.time() - 60))
    note = repair_experiment_state(str(exp))
    assert note == (
        f"repaired 4 file(s) of {exp} cut short or not yet uploaded (basic-variant-state-{stamp}.json, "
        f"experiment_state-{stamp}.json, trial_1/params.json, trial_1/result.json) from the driver's copies in "
        f"{stage}"
    )
    assert (exp / "trial_1" / "progress.csv").read_bytes() == b"epoch\n2\n"
    (stage / "trial_1" / "progress.csv").unlink()
    (exp / "trial_1" / "progress.csv").unlink()
    assert hashes(exp) == hashes(stage)
    assert repair_experiment_state(str(exp)) is None  # nothing left to repair
    shutil.rmtree(tmp_path / "ray")
    (exp / f"experiment_state-{stamp}.json").write_bytes(b"{")
    with pytest.raises(CxrError, match=rf"Tune's state experiment_state-{stamp}.json is cut short \(1 bytes"):
        repair_experiment_state(str(exp))


# ---------------------------------------------------- 6. SIGTERM, 5. a second driver, 3. a damaged checkpoint


@pytest.fixture(scope="module")
def terminated(small_data, tmp_path_factory):
    """A sweep stopped with SIGTERM after two epochs, a second driver refused while it ran, the checkpoint Tune
    restores then cut short, and the sweep resumed with the command it printed.

    After the second epoch the driver and its trial's process are paused (SIGSTOP) while the second driver
    starts, so that it meets the first mid-sweep however slow this machine is; then SIGTERM reaches the first.
    """
    tmp = tmp_path_factory.mktemp("sigterm")
    space = space_file(tmp, small_data, name="term", epochs=12)
    rr, exp = tmp / "rr", tmp / "rr" / "term"
    cmd = [*SWEEP, str(space), "--name", "term", "--storage", str(rr), "--num-cpus", "2", "--quiet"]

    with open(tmp / "out", "w") as out, open(tmp / "err", "w") as err:
        first = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        deadline = time.time() + 300
        # The trial uploads each epoch's checkpoint as it reports it (the storage's result.json comes later).
        while time.time() < deadline and not list(exp.glob("*/checkpoint_000001/trial_state.json")):
            assert first.poll() is None, (tmp / "err").read_text()[-3000:]
            time.sleep(0.05)
        worker = next(p for p in psutil.Process(first.pid).children(recursive=True)
                      if "ImplicitFunc" in " ".join(p.cmdline()))  # fmt: skip
        # ... and the driver has taken in that second epoch (its own result.json, beside the trial's working
        # folder in Ray's session folder), so Tune's saved state names checkpoint_000001 or a later one.
        working = Path(worker.cwd())
        staged = working.parent.parent / "driver_artifacts" / working.name / "result.json"
        while time.time() < deadline and (not staged.is_file() or len(staged.read_text().splitlines()) < 2):
            time.sleep(0.05)
        worker = worker.pid
        for pid in (worker, first.pid):
            os.kill(pid, signal.SIGSTOP)
        try:
            second = run([*cmd, "--resume"])
        finally:
            first.send_signal(signal.SIGTERM)  # delivered as the driver continues
            for pid in (first.pid, worker):
                os.kill(pid, signal.SIGCONT)
        first.wait(timeout=300)
    err = (tmp / "err").read_text()
    hint = err.strip().splitlines()[-1]
    trial = next(exp.glob("lora-*"))
    # Cut short every checkpoint after the first: whichever of them Tune's saved state names (its last upload
    # may be newer than the storage's result.json), the trial must fall back to the first.
    damaged = [
        c
        for c in sorted(trial.glob("checkpoint_*"))
        if json.loads((c / "trial_state.json").read_text())["epoch"] >= 2
    ]
    for folder in damaged:
        _truncate(folder / "model" / "adapter_model.safetensors")
    command = shlex.split(hint.split("continue with: ", 1)[-1])
    resumed = run([sys.executable, *command[1:], "--num-cpus", "2", "--quiet"])
    return {"first": (first.returncode, err), "second": second, "hint": hint, "space": space, "rr": rr,
            "exp": exp, "damaged": [c.name for c in damaged], "resumed": resumed}  # fmt: skip


@pytest.mark.slow
@pytest.mark.serial
def test_sigterm_saves_the_state_and_prints_the_resume_command(terminated):
    code, err = terminated["first"]
    assert code == 143 and "Traceback" not in err and "SIGTERM received" not in err, err[-3000:]
    assert terminated["hint"] == (
        f"terminated (SIGTERM); continue with: python -m jobs.sweep {terminated['space']} --name term "
        f"--storage {terminated['rr']} --resume"
    )
    assert not (terminated["rr"] / ".term.driver-lock").exists()  # released


@pytest.mark.slow
@pytest.mark.serial
def test_second_driver_on_the_same_sweep_is_refused(terminated):
    assert_refused(terminated["second"], f"another driver is running the sweep {terminated['exp']} (pid ",
                   "`kill -TERM PID` saves its state")  # fmt: skip


@pytest.mark.slow
@pytest.mark.serial
def test_resume_past_a_damaged_checkpoint_finishes_and_says_so(terminated):
    from cxr_core.study_report import write_report
    from cxr_core.tune_runner import results_frame

    resumed = terminated["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 trials, 0 errored, 0 unfinished" in resumed.stdout
    assert "faults survived (1):" in resumed.stdout
    line = next((x for x in resumed.stdout.splitlines() if "is damaged" in x), None)
    assert line is not None, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert terminated["damaged"][0] == "checkpoint_000001"
    assert "checkpoint_000001 is damaged (model/adapter_model.safetensors is truncated" in line
    assert line.endswith("; resumed from checkpoint_000000 (epoch 1)")
    epochs = results_frame(terminated["exp"])
    assert sorted(epochs["epoch"].astype(int)) == list(
        range(1, 13)
    )  # each epoch once: the redone one replaces the old
    assert (epochs["status"] == "TERMINATED").all()
    summary = (write_report(terminated["exp"], n_boot=100) / "summary.md").read_text()
    assert summary.rstrip().endswith(f"- {line.strip()}") and "\n## Faults survived\n\n- " in summary


# ------------------------------------------------------------ 1. authentication, 7. a worker node lost


@pytest.fixture(scope="module")
def token_cluster():
    """A local cluster that requires a token (RAY_AUTH_MODE=token): a head without CPUs and two 1-CPU workers."""
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.cluster_utils import Cluster

    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {k: os.environ.get(k) for k in names}

    def apply(values: dict) -> None:
        for k in names:
            os.environ.pop(k, None)
            if values.get(k) is not None:
                os.environ[k] = values[k]
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    token = secrets.token_hex(16)
    apply({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster, token
    finally:
        cluster.shutdown()
        apply(saved)


AUTH_ROWS = {
    "auth_token_missing": ({"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None},
                           ["requires token authentication and this driver has none (InvalidAuthToken",
                            "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the cluster's token>"]),
    "auth_token_wrong": ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
                         ["refused this driver's token (InvalidAuthToken)", "is not the one the head was started with"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("row", list(AUTH_ROWS))
def test_sweep_refuses_a_cluster_with_another_auth_setting(row, token_cluster, small_data, tmp_path):
    cluster, _ = token_cluster
    changes, phrases = AUTH_ROWS[row]
    env = {k: v for k, v in os.environ.items() if k not in changes} | {k: v for k, v in changes.items() if v}
    space = space_file(tmp_path, small_data)
    start = time.monotonic()
    proc = subprocess.run([*SWEEP, str(space), "--storage", str(tmp_path / "rr"), "--address", cluster.address],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert_refused(proc, f"the Ray cluster at {cluster.address}", *phrases)
    assert time.monotonic() - start < 15 and len(proc.stderr.strip().splitlines()) == 1  # one line, at once


@pytest.mark.slow
def test_sweep_refuses_a_port_that_speaks_grpc_but_is_not_the_head(token_cluster, small_data, tmp_path):
    cluster, _ = token_cluster
    raylet = f"{cluster.head_node.node_ip_address}:{cluster.head_node.node_manager_port}"
    proc = run([*SWEEP, str(space_file(tmp_path, small_data)), "--address", raylet])
    assert_refused(
        proc, f"--address {raylet} is not a Ray head: it speaks gRPC but does not serve Ray's GCS (RpcError)"
    )


@pytest.mark.slow
@pytest.mark.serial
def test_worker_node_lost_mid_trial_is_retried_from_its_checkpoint(token_cluster, small_data, tmp_path):
    """The node running the trial is removed after its first epoch; Tune retries the trial on the other worker
    from that epoch's checkpoint (max_failures), and the sweep's summary lists the retry."""
    cluster, _ = token_cluster
    space = space_file(tmp_path, small_data, name="lost", epochs=8, max_train=48, max_failures=2)
    rr = tmp_path / "rr"
    cmd = [*SWEEP, str(space), "--storage", str(rr), "--address", cluster.address, "--quiet"]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        deadline = time.time() + 300
        first = None
        while time.time() < deadline and first is None and driver.poll() is None:
            time.sleep(0.1)
            # The driver's own result.json (Ray's session folder) has each epoch at once; the storage's lags.
            for result in Path(cluster.head_node.get_session_dir_path()).glob(
                "artifacts/*/lost/*/*/result.json"
            ):
                lines = result.read_text().splitlines()
                if lines:
                    first = json.loads(lines[0])
        assert first is not None, (tmp_path / "err").read_text()[-3000:]
        lost = next(n for n in cluster.worker_nodes if n.node_id == first["node_id"])
        cluster.remove_node(lost)
        driver.wait(timeout=300)
    out = (tmp_path / "out").read_text()
    assert driver.returncode == 0, (tmp_path / "err").read_text()[-3000:]
    assert "1 trials, 0 errored, 0 unfinished" in out
    assert "failed once and was retried from its last checkpoint" in out, out[-1500:]
    from cxr_core.tune_runner import results_frame

    epochs = results_frame(rr / "lost").sort_values("epoch")
    assert epochs["epoch"].astype(int).tolist() == list(range(1, 9)), epochs[["epoch", "node_id"]]  # none lost
    # Finished on the other node. (Epoch 1 itself may be from either: when the node goes before epoch 1's checkpoint
    # reached the storage, the retry trains epoch 1 again, and the newer report of an epoch is the one kept.)
    assert epochs["node_id"].iloc[-1] != first["node_id"]
