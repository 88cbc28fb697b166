"""Ray Tune packs trials onto GPUs: FFT a whole GPU (``resources.gpu: 1``), LoRA half of one (``gpu: 0.5``).

Each test starts a local cluster with ``ray.cluster_utils.Cluster`` that declares GPUs this machine does not have
(two on one node, or one on each of two nodes), runs a real sweep on the embedded model through ``jobs.sweep`` and
reads the packing back from what every trial recorded itself: the accelerator ids Ray assigned it
(``accelerator_ids``, ``cuda_visible_devices``), its node and its start and end times (``started_at``, the last
``reported_at``). Torch sees no CUDA here, so every trial also falls back to the CPU: that must be said (the
``gpu_fallback`` column, the sweep's last lines, the report's summary), and ``--require-gpu`` must refuse it before
anything trains.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxr_core.errors import CxrError
from tests.conftest import REPO
from tests.test_errors import assert_refused, hashes

SPACE = """
name: {name}
defaults:
  model: embedded
  data: {{split_dir: {splits}, image_root: {root}, max_train: 8, max_val: 4}}
  train: {{epochs: 1, batch_size: 8, num_threads: 1}}
  evaluation: {{max_new_tokens: 4, batch_size: 4}}
arms:
  - name: lora
    method: lora
    lora: {{r: 4, target_modules: all_linear}}
    train: {{lr: 5.0e-3, seed: {{grid_search: [0, 1, 2]}}}}
    resources: {{cpu: 0.25, gpu: 0.5}}
  - name: fft
    method: fft
    train: {{lr: 1.0e-3, seed: {{grid_search: [0, 1]}}}}
    resources: {{cpu: 0.25, gpu: 1}}
"""
SHARE = {"lora": 0.5, "fft": 1.0}


@pytest.fixture
def gpu_cluster():
    """``start(gpus_per_node)``: a local cluster whose nodes declare those GPUs (a head without any when there
    are several nodes, so that trials run on the declared ones); every cluster is shut down after the test."""
    from ray.cluster_utils import Cluster

    made = []

    def start(gpus_per_node: list[int]):
        if len(gpus_per_node) == 1:
            head = {"num_cpus": 2, "num_gpus": gpus_per_node[0], "include_dashboard": False}
        else:
            head = {"num_cpus": 0, "num_gpus": 0, "include_dashboard": False}
        c = Cluster(initialize_head=True, head_node_args=head)
        made.append(c)
        for gpus in gpus_per_node if len(gpus_per_node) > 1 else []:
            c.add_node(num_cpus=1, num_gpus=gpus)
        c.wait_for_nodes()
        return c

    yield start
    for c in made:
        c.shutdown()


def sweep(space, storage, address, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.sweep", str(space), "--storage", str(storage), "--address", address,
           "--quiet", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def spans(path):
    """One row per trial: its arm, node, assigned ids, device and fallback flag, start and end (unix s)."""
    from cxr_core.tune_runner import results_frame

    epochs = results_frame(path)
    assert (epochs["status"] == "TERMINATED").all(), epochs[["trial_id", "status", "error"]]
    epochs["accelerator_ids"] = epochs["accelerator_ids"].fillna("").astype(str)
    epochs["cuda_visible_devices"] = epochs["cuda_visible_devices"].fillna("").astype(str)
    return epochs.groupby("trial_id").agg(
        arm=("config/name", "first"),
        node=("node_id", "first"),
        ids=("accelerator_ids", "first"),
        visible=("cuda_visible_devices", "first"),
        device=("device", "first"),
        fallback=("gpu_fallback", "all"),
        start=("started_at", "min"),
        end=("reported_at", "max"),
    )


def check_packing(trials, gpus_per_node: dict[str, int]) -> None:
    """From the trials' own records: no GPU ever holds more than one FFT trial or two LoRA trials (or one of each
    at once), no node more than its declared GPUs, and two LoRA trials did share a GPU while running."""
    assert sorted(trials["arm"]) == ["fft", "fft", "lora", "lora", "lora"]
    for t in trials.itertuples():
        assert t.ids in {str(i) for i in range(gpus_per_node[t.node])}, t  # one id, of its node's GPUs
        assert t.visible == t.ids, t  # Ray set CUDA_VISIBLE_DEVICES to it
        assert t.device == "cpu" and t.fallback, t  # no CUDA here: the CPU, said so
        assert t.start < t.end, t
    rows = list(trials.itertuples())
    shared_lora = False
    for now in sorted(trials["start"]):  # the set of running trials only grows at a start
        running = [t for t in rows if t.start <= now < t.end]
        per_gpu: dict[tuple, float] = {}
        for t in running:
            per_gpu[(t.node, t.ids)] = per_gpu.get((t.node, t.ids), 0.0) + SHARE[t.arm]
        assert max(per_gpu.values()) <= 1.0, running  # FFT alone on its GPU, at most two LoRA on one
        for node, gpus in gpus_per_node.items():
            assert sum(SHARE[t.arm] for t in running if t.node == node) <= gpus, running
        assert sum(t.arm == "fft" for t in running) <= 2 and sum(t.arm == "lora" for t in running) <= 4
        fft = [(t.node, t.ids) for t in running if t.arm == "fft"]
        assert len(fft) == len(set(fft)), running  # no two concurrent FFT trials on one GPU
        lora = [(t.node, t.ids) for t in running if t.arm == "lora"]
        shared_lora |= len(lora) > len(set(lora))
    assert shared_lora, rows  # two LoRA trials ran at once on one GPU, half each


def fallback_said(console: str) -> None:
    lines = [line for line in console.splitlines() if "ran on CPU although" in line]
    assert len(lines) == 1, console  # once, at the end
    line = lines[0]
    assert "arm fft ran on CPU although resources.gpu = 1 (2 trials: fft-lr0.001-s0_" in line, line
    assert "arm lora ran on CPU although resources.gpu = 0.5 (3 trials: lora-all_linear-r4-" in line, line
    assert "--require-gpu refuses" in line


@pytest.mark.slow
def test_fft_takes_a_gpu_lora_half_and_the_cpu_fallback_is_said(gpu_cluster, small_data, tmp_path):
    root, splits = small_data
    c = gpu_cluster([2])
    space = tmp_path / "pack.yaml"
    space.write_text(SPACE.format(name="pack", splits=splits, root=root))
    proc = sweep(space, tmp_path / "rr", c.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback_said(proc.stdout)
    trials = spans(tmp_path / "rr" / "pack")
    check_packing(trials, {c.head_node.node_id: 2})
    analyze = subprocess.run([sys.executable, "-m", "jobs.analyze", str(tmp_path / "rr" / "pack")], cwd=REPO,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    summary = (tmp_path / "rr" / "pack" / "report" / "summary.md").read_text()
    head = summary.split("## Verdict")[0]  # said before the verdicts, once
    assert head.count("ran on CPU although resources.gpu = 1 (2 trials") == 1, head
    assert summary.count("ran on CPU although") == 2  # the two arms, in that one line


@pytest.mark.slow
def test_two_nodes_one_gpu_each_and_require_gpu_refuses_before_training(gpu_cluster, small_data, tmp_path):
    root, splits = small_data
    c = gpu_cluster([1, 1])
    space = tmp_path / "nodes.yaml"
    space.write_text(SPACE.format(name="nodes", splits=splits, root=root))
    storage = tmp_path / "rr"
    storage.mkdir()
    refused = sweep(space, storage, c.address, "--require-gpu")
    assert_refused(refused, "arm lora (resources.gpu = 0.5), arm fft (resources.gpu = 1): GPU required",
                   "CUDA is unavailable on 2 of the cluster's 2 GPU node(s)", "drop --require-gpu")  # fmt: skip
    assert hashes(storage) == {} and [p.name for p in storage.iterdir()] == []  # nothing trained, nothing left
    proc = sweep(space, storage, c.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback_said(proc.stdout)
    trials = spans(storage / "nodes")
    workers = {n.node_id: 1 for n in c.worker_nodes}
    check_packing(trials, workers)
    assert set(trials["node"]) == set(workers)  # both nodes' GPUs were used, the head (no GPU) never


def test_a_trial_that_requires_a_gpu_stops_before_it_loads_anything(tmp_path):
    """Where torch sees no CUDA: a GPU share falls back to the CPU, said in one line; with require_gpu the trial
    refuses before it reads data (the split folder here does not even exist) or loads a model."""
    import torch

    from cxr_core.config import trial_config
    from cxr_core.trial import device_for, gpu_fallback, run_trial

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: nothing falls back")
    data = {"split_dir": str(tmp_path / "no-such-splits"), "image_root": str(tmp_path)}
    config = {"name": "fft", "method": "fft", "data": data, "resources": {"gpu": 0.5}}
    line = gpu_fallback(trial_config(config), "fft-lr0.0001-s0_abc")
    assert line.startswith("fft-lr0.0001-s0_abc: resources.gpu = 0.5 but CUDA is unavailable here (torch ")
    assert device_for(trial_config(config)).type == "cpu"
    assert gpu_fallback(trial_config({**config, "resources": {"gpu": 0}})) is None  # no GPU asked, none missed
    reports = []
    with pytest.raises(
        CxrError, match=r"^fft-lr0.0001-s0_abc: resources.gpu = 0.5 but CUDA is unavailable here"
    ):
        run_trial({**config, "resources": {"gpu": 0.5, "require_gpu": True}}, report=lambda m, f: reports.append(m),
                  name="fft-lr0.0001-s0_abc")  # fmt: skip
    assert reports == [] and not (tmp_path / "no-such-splits").exists()
