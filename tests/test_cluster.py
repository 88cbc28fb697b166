"""Orchestration under real conditions: a multi-node Ray cluster, a driver killed and resumed, a failing trial.

Each test starts its own local cluster with ``ray.cluster_utils.Cluster`` (processes on this machine only)
and shuts it down; the sweep's driver is a separate ``python -m jobs.sweep`` process joining by address.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.serial]

SPACE = """
name: {name}
metric: label_f1_micro
mode: max
max_failures: {max_failures}
defaults:
  model: embedded
  data: {{split_dir: {splits}, image_root: {root}, max_train: 32, max_val: 16}}
  train: {{epochs: 2, batch_size: 16, num_threads: 1}}
  evaluation: {{max_new_tokens: 24}}
  resources: {{cpu: 1}}
arms:
{arms}
"""

FFT_ARM = """  - name: fft
    method: fft
    train: {lr: {grid_search: [3.0e-4, 1.0e-3, 3.0e-3]}}
"""


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    made = []

    def start(*, head_cpus: int, workers: int = 0):
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
        for _ in range(workers):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        made.append(c)
        return c

    yield start
    for c in made:
        c.shutdown()


def space_file(tmp_path, small_data, *, name, arms, max_failures=0, splits=None):
    root, default_splits = small_data
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, splits=splits or default_splits, root=root, arms=arms,
                                 max_failures=max_failures))  # fmt: skip
    return path


def sweep_cmd(space, storage, address, *extra):
    return [sys.executable, "-m", "jobs.sweep", str(space), "--storage", str(storage), "--address", address,
            "--quiet", *extra]  # fmt: skip


def run(cmd):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def epochs_of(path):
    from cxr_core.tune_runner import results_frame

    return results_frame(path)


def test_multinode_trials_run_on_the_workers(cluster, small_data, tmp_path):
    c = cluster(head_cpus=0, workers=2)
    head_id = c.head_node.node_id
    worker_ids = {n.node_id for n in c.worker_nodes}
    arms = "  - name: fft\n    method: fft\n    train: {lr: {grid_search: [1.0e-3, 3.0e-3]}}\n"
    space = space_file(tmp_path, small_data, name="multi", arms=arms)
    run(sweep_cmd(space, tmp_path / "rr", c.address))
    epochs = epochs_of(tmp_path / "rr" / "multi")
    assert len(set(epochs["trial_id"])) == 2
    used = set(epochs["node_id"])
    assert used <= worker_ids and head_id not in used
    assert (epochs.groupby("trial_id")["epoch"].max() == 2).all()


def test_driver_killed_then_resumed(cluster, small_data, tmp_path):
    c = cluster(head_cpus=1)  # one slot: trials run one after another
    space = space_file(tmp_path, small_data, name="resume", arms=FFT_ARM)
    exp = tmp_path / "rr" / "resume"
    driver = subprocess.Popen(sweep_cmd(space, tmp_path / "rr", c.address), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    finished = None
    deadline = time.time() + 600
    while time.time() < deadline and finished is None:
        time.sleep(1)
        for result in exp.glob("*/result.json"):
            lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
            if len(lines) == 2 and list(result.parent.glob("checkpoint_*")):
                finished = (result.parent.name, lines)
    assert finished is not None, "no trial finished in time"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    run(sweep_cmd(space, tmp_path / "rr", c.address, "--resume"))
    epochs = epochs_of(exp)
    assert len(set(epochs["trial_id"])) == 3  # every planned trial, none twice
    counts = epochs.groupby("trial_id")["epoch"].apply(sorted)
    assert all(v == [1, 2] for v in counts)  # each epoch reported exactly once
    assert (epochs.groupby("trial_id")["status"].first() == "TERMINATED").all()
    folder, lines = finished
    before = [line["val_loss"] for line in lines]
    kept = epochs[epochs["trial_path"].str.endswith(folder)].sort_values("epoch")["val_loss"].tolist()
    assert kept == pytest.approx(before)  # the finished trial was not rerun, its results not lost


def test_failing_trial_is_retried_then_recorded_while_the_rest_finishes(cluster, small_data, tmp_path):
    root, splits = small_data
    bad = tmp_path / "bad_splits"
    bad.mkdir()
    for name in ("train", "val", "test"):
        (bad / f"{name}_split.csv").write_text((splits / f"{name}_split.csv").read_text())
    # A truncated JPEG in its own image root, referenced by the first training row.
    frame = pd.read_csv(bad / "train_split.csv")
    row = frame.iloc[0]
    bad_root = tmp_path / "bad_root"
    rel = f"files/p{str(row.subject_id)[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.jpg"
    (bad_root / rel).parent.mkdir(parents=True)
    good = (root / rel).read_bytes()
    (bad_root / rel).write_bytes(good[: len(good) // 3])
    arms = (
        "  - name: good\n    method: fft\n    train: {lr: 1.0e-3}\n"
        f"  - name: broken\n    method: fft\n    train: {{lr: 1.0e-3}}\n"
        f"    data: {{split_dir: {bad}, image_root: {bad_root}, image_policy: error, max_train: 1, max_val: 16}}\n"
    )
    c = cluster(head_cpus=2)
    space = space_file(tmp_path, small_data, name="fail", arms=arms, max_failures=1)
    proc = run(sweep_cmd(space, tmp_path / "rr", c.address))
    assert "1 errored" in proc.stdout
    run([sys.executable, "-m", "jobs.analyze", str(tmp_path / "rr" / "fail")])
    trials = pd.read_csv(tmp_path / "rr" / "fail" / "report" / "trials.csv")
    status = dict(zip(trials["config/name"], trials["status"], strict=True))
    assert status == {"good": "TERMINATED", "broken": "ERROR"}
    error = trials.set_index("config/name").loc["broken", "error"]
    assert "unreadable" in error and "bad_root" in error  # the message names the problem and the path
    summary = (tmp_path / "rr" / "fail" / "report" / "summary.md").read_text()
    assert "ERROR" in summary and "unreadable" in summary
