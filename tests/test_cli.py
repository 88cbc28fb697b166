"""The ``cxr-tune`` console script: every job behind one command, the same options as ``python -m jobs.X``."""

import subprocess
import sys
from pathlib import Path

from jobs.cli import JOBS

CLI = Path(sys.executable).parent / "cxr-tune"
REPO_ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def test_lists_every_job_and_each_is_a_module_with_main():
    proc = run("--help")
    assert proc.returncode == 0
    for job in JOBS:
        assert f"  {job} " in proc.stdout
        module = __import__(f"jobs.{job.replace('-', '_')}", fromlist=["main"])
        assert callable(module.main)


def test_a_job_gets_its_own_options_and_an_unknown_one_is_refused():
    proc = run("analyze", "--help")
    assert proc.returncode == 0 and "usage: cxr-tune analyze" in proc.stdout and "--margin" in proc.stdout
    proc = run("swep", "x.yaml")
    assert proc.returncode == 2 and "unknown job 'swep'" in proc.stderr and "sweep" in proc.stderr
    proc = run("sweep", "no/such/space.yaml")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no/such/space.yaml" in proc.stderr


def test_dry_run_checks_the_data_shows_seeds_and_writes_its_plan_under_the_storage(small_data, tmp_path):
    import pandas as pd

    from cxr_core.testing import two_arm_space
    from tests.conftest import run_module

    root, splits = small_data
    space = tmp_path / "space.yaml"
    fill = dict(name="plan", max_train=8, max_val=8, metric="val_loss", mode="min")
    space.write_text(two_arm_space(splits, root, seeds=[0, 1], **fill))
    proc = run_module("jobs.sweep", str(space), "--dry-run", "--storage", str(tmp_path / "rr"))
    plan = pd.read_csv(tmp_path / "rr" / "plans" / "plan.csv")
    assert sorted(zip(plan["method"], plan["seed"], strict=True)) == [
        ("fft", 0),
        ("fft", 1),
        ("lora", 0),
        ("lora", 1),
    ]
    assert "seed" in proc.stdout.splitlines()[0] and "plan written to" in proc.stdout
    assert not (
        tmp_path / "rr" / "plan"
    ).exists()  # no results folder: a real sweep of that name can still start
    # The same data checks as a real sweep: a split folder without its CSVs is refused before any model is built.
    space.write_text(two_arm_space(tmp_path, root, **fill))
    bad = subprocess.run([sys.executable, "-m", "jobs.sweep", str(space), "--dry-run"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "train_split.csv" in bad.stderr
