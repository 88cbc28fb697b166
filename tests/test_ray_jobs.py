"""Launch through Ray Jobs: `ray job submit` to a token-protected local head runs a sweep whose results land in
the given storage; the README's submit command and the KubeRay manifest agree and parse."""

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

HEAD = """
import json, sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": int(sys.argv[1])})
print(json.dumps({"address": c.address}), flush=True)
sys.stdin.read()  # until the test closes stdin
c.shutdown()
"""

SPACE = """
name: job
metric: label_f1_micro
mode: max
defaults:
  model: embedded
  data: {{split_dir: {splits}, image_root: {root}, max_train: 16, max_val: 8}}
  train: {{epochs: 1, batch_size: 8, num_threads: 1}}
  evaluation: {{max_new_tokens: 16}}
  resources: {{cpu: 1}}
arms:
  - name: fft
    method: fft
    train: {{lr: 1.0e-3}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env, timeout=300):
    ray = Path(sys.executable).parent / "ray"
    return subprocess.run([str(ray), *args], env=env, capture_output=True, text=True, timeout=timeout)


# Serial: run beside another Ray instance (a parallel test's), `ray job submit` got "No available agent to submit
# job" for minutes (most likely the job agent's default port, 52365, held by the other instance's agent).
@pytest.mark.serial
def test_ray_job_submit_runs_a_sweep_on_a_token_protected_head(small_data, tmp_path):
    root, splits = small_data
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(splits=splits, root=root))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HF_HUB_OFFLINE": "1",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}  # fmt: skip
    port = _free_port()
    head = subprocess.Popen([sys.executable, "-c", HEAD, str(port)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        json.loads(head.stdout.readline())  # the head is up
        dashboard = f"http://127.0.0.1:{port}"
        entry = ["python", "-m", "jobs.sweep", str(space), "--name", "job", "--storage", str(tmp_path / "rr"),
                 "--address", "auto", "--quiet"]  # fmt: skip
        # Without the token the Jobs API refuses to talk.
        stranger = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        stranger["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
        refused = _ray("job", "list", "--address", dashboard, env=stranger, timeout=120)
        assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr
        # With it, the job runs the sweep; submit follows the log until the job ends.
        proc = _ray("job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--", *entry, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert re.search(r"Job 'raysubmit_\w+' succeeded", out)
        assert "sweep finished: 1 trials, 0 errored, 0 unfinished" in out  # the job's own log, followed
        results = tmp_path / "rr" / "job"
        trials = [p for p in results.iterdir() if p.is_dir() and (p / "result.json").is_file()]
        assert len(trials) == 1
        assert json.loads((trials[0] / "result.json").read_text().splitlines()[-1])["epoch"] == 1
    finally:
        head.stdin.close()
        head.wait(timeout=120)


def _readme_entrypoint() -> list[str]:
    text = (REPO / "README.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("ray job submit "))
    return shlex.split(line.split(" -- ", 1)[1])


def test_kuberay_manifest_and_readme_submit_the_same_command_the_cli_accepts():
    from jobs.sweep import parse_args

    manifest = yaml.safe_load((REPO / "docs" / "deploy" / "rayjob.yaml").read_text())
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"].startswith("ray.io/")
    entry = shlex.split(manifest["spec"]["entrypoint"])
    assert entry == _readme_entrypoint()
    assert entry[:3] == ["python", "-m", "jobs.sweep"]
    args = parse_args(entry[3:])
    assert (REPO / args.space).is_file() and args.address == "auto" and args.storage and args.name
    head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
