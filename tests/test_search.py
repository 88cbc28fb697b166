"""Search algorithms and schedulers on a real tiny sweep: Optuna over a conditional space, with ASHA."""

import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.slow

SPACE = """
name: optuna_asha
metric: val_loss
mode: min
search: {{algorithm: optuna, seed: 0}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2, max_t: 2}}
defaults:
  model: embedded
  data: {{split_dir: {splits}, image_root: {root}, max_train: 32, max_val: 16}}
  train: {{epochs: 2, num_threads: 1}}
  evaluation: {{max_new_tokens: 16}}
arms:
  - name: fft
    method: fft
    num_samples: 2
    train: {{lr: {{loguniform: [1.0e-4, 1.0e-2]}}}}
  - name: lora
    method: lora
    num_samples: 2
    train: {{lr: {{loguniform: [1.0e-3, 3.0e-2]}}}}
    lora: {{r: {{choice: [4, 8]}}, target_modules: {{grid_search: [text, all_linear]}}}}
"""


def test_optuna_with_asha_runs_every_sample_with_its_arms_own_ranges(small_data, tmp_path):
    from cxr_core.tune_runner import results_frame

    root, splits = small_data
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(root=root, splits=splits))
    run_module("jobs.sweep", str(space), "--storage", str(tmp_path / "rr"), "--num-cpus", "2", "--quiet")
    frame = results_frame(tmp_path / "rr" / "optuna_asha")
    trials = frame.groupby("trial_id").first()
    assert len(trials) == 4  # num_samples summed over the arms
    for _, row in trials.iterrows():
        lr = row["config/train/lr"]
        if row["config/method"] == "fft":
            assert 1e-4 <= lr <= 1e-2
        else:
            assert 1e-3 <= lr <= 3e-2 and row["config/lora/r"] in (4, 8)
            assert row["config/lora/target_modules"] in ("text", "all_linear")
    assert frame.groupby("trial_id")["epoch"].max().max() <= 2
