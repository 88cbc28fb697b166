"""The benchmark scripts run (tiny sizes) and print their JSON last line; bench/gpu.py and the GPU check
(scripts/gpu_check.sh) work on a CPU."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, run_module

pytestmark = pytest.mark.slow


def last_json(*args):
    proc = run_module(*args, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_check_script_runs_on_cpu_at_tiny_size(tmp_path):
    """scripts/gpu_check.sh --tiny: the GPU check's every step (bench.gpu, data, the 6-trial sweep, its tables) on a
    CPU, so the script is known to run when a GPU comes."""
    env = {**os.environ, "CXR_PYTHON": sys.executable}  # this interpreter: no set-up from inside the tests
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--tiny", "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["bench"], result["tiny"], result["device"]) == ("gpu_check", True, "cpu")
    # bench.gpu (python -m bench.gpu --tiny --device cpu --steps 1) works on a CPU: every method's rows.
    rows = {r["config"]: r for r in result["bench_gpu"]["rows"]}
    assert set(rows) >= {"fft", "fft_freeze_vision", "lora_r16_vision", "lora_r16_all_linear"}
    assert rows["fft"]["trainable_params"] == rows["fft"]["total_params"]
    assert rows["fft_freeze_vision"]["trainable_params"] < rows["fft"]["trainable_params"]
    assert rows["lora_r16_all_linear"]["trainable_params"] > rows["lora_r16_vision"]["trainable_params"] > 0
    # IA3 on the tiny GIT (2 layers per tower, width 32, feed-forward 64): key + value + feed-forward per layer.
    assert rows["ia3_vision"]["trainable_params"] == rows["ia3_text"]["trainable_params"] == 2 * (32 + 32 + 64)
    assert rows["ia3_all"]["trainable_params"] == 2 * rows["ia3_text"]["trainable_params"]
    assert all(r["samples_per_s"] > 0 and r["mfu"] >= 0 for r in rows.values())
    # The frozen-encoder arms also run with the feature cache (the same model and trainable parameters).
    for name in ("fft_freeze_vision", "lora_r16_text"):
        assert rows[f"{name}_cached"]["trainable_params"] == rows[name]["trainable_params"]
    # The sweep: FFT and text / all_linear LoRA, one seed each at tiny size, on the embedded model at gpu 0.
    sweep = result["sweep"]
    trials = sweep["trials"]
    assert sorted((t["arm"], t["preset"]) for t in trials) == [
        ("fft", ""),
        ("lora", "all_linear"),
        ("lora", "text"),
    ]
    for t in trials:
        assert t["status"] == "TERMINATED" and t["device"] == "cpu" and t["gpu_share"] == 0, t
        assert not t["gpu_fallback"] and t["accelerator_ids"] == "", t  # no GPU asked, none given, none missed
        assert t["train_samples_per_s"] > 0 and t["peak_mem_mb"] >= 0 and t["started_at"] < t["ended_at"], t
    assert {t["feature_cache"] for t in trials if t["preset"] == "text"} == {"file"}  # frozen encoder: cached
    packing = sweep["packing"]
    assert packing["trials"] == 3 and 1 <= packing["most_at_once"] <= 2  # 2 CPUs, 1 per trial
    assert packing["most_on_one_gpu"] == 0 and not packing["lora_shared_a_gpu"]
    busy = sum(t["ended_at"] - t["started_at"] for t in trials)
    assert packing["sum_of_trials_s"] == pytest.approx(busy, abs=0.1)
    assert sweep["gpu_fallback_line"] is None and (sweep["n_train"], sweep["n_val"]) == (8, 4)
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| fft-lr1e-05-s") == 1 and table.count("\n| lora-") == 2
    assert table.count("\n| fft | 2 |") == 1  # bench.gpu's FFT row at the tiny batch
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result


def test_step_overhead_bench_small():
    result = last_json("bench.step_overhead", "--samples", "32", "--rounds", "1")
    assert result["bare_epoch_s"] > 0 and result["trial_epoch_s"] > 0
    assert result["overhead"] == pytest.approx(result["trial_epoch_s"] / result["bare_epoch_s"] - 1, abs=1e-3)


def test_paired_bootstrap_bench_small():
    result = last_json(
        "bench.paired_bootstrap", "--images", "300", "--configs", "3", "--seeds", "2", "--resamples", "100"
    )
    # Per metric (2): one interval per configuration, one comparison of each other configuration to the first.
    assert (result["intervals"], result["comparisons"]) == (6, 4)
    assert sum(result["verdicts"].values()) == 4
    assert 0 < result["analysis_seconds"] < result["target_seconds"] and result["meets_target"]
    assert result["weights_mb"] == round(100 * 300 * 4 / 2**20, 1) and result["peak_rss_mb"] > 0
    assert 0 < result["widest_interval"] < 1


def test_cpu_precision_bench_small():
    result = last_json("bench.cpu_precision", "--samples", "16", "--rounds", "1")
    assert result["fp32_epoch_s"] > 0 and result["bf16_epoch_s"] > 0
    assert result["speedup"] == pytest.approx(result["fp32_epoch_s"] / result["bf16_epoch_s"], abs=1e-2)
    # Same data, same initial weights, one epoch: bf16 autocast must not change the loss beyond rounding.
    assert result["bf16_train_loss"] == pytest.approx(result["fp32_train_loss"], rel=0.02)


def test_label_readability_bench_reads_a_strong_sign(small_data):
    root, splits = small_data
    labels = last_json("bench.label_readability", "--splits", str(splits), "--images", str(root),
                       "--labels", "Cardiomegaly,Pleural_Effusion")["labels"]  # fmt: skip
    # Cardiomegaly (a heart 40% wider) is the strongest sign the generator draws: a linear probe must find it on
    # the pixels; every reported label has its counts and both probes' AUC in [0, 1].
    assert labels["Cardiomegaly"]["pixels"]["auc"] > 0.85
    for row in labels.values():
        assert row["train_positives"] >= 3 and row["test_positives"] >= 1
        assert all(0 <= row[k]["auc"] <= 1 and 0 <= row[k]["f1"] <= 1 for k in ("pixels", "vision_tokens"))


def test_feature_cache_bench_small():
    result = last_json("bench.feature_cache", "--model", "embedded", "--samples", "8", "--rounds", "1",
                       "--threads", "1", "--eval-images", "4", "--max-new-tokens", "8")  # fmt: skip
    rows = {r["arm"]: r for r in result["rows"]}
    assert set(rows) == {"lora_r8_text", "fft_freeze_vision"}
    for r in rows.values():
        assert r["off_epoch_s"] > 0 and r["cached_epoch_s"] > 0 and r["build_s"] > 0
        assert r["speedup"] == pytest.approx(r["off_epoch_s"] / r["cached_epoch_s"], abs=1e-2)
        # Same batches, same initial weights: the cache must not change what is learned.
        assert r["cached_train_loss"] == pytest.approx(r["off_train_loss"], rel=1e-5)
        # A CPU trial keeps them in a file entry: 8 images x 65 tokens x 128 floats of the tiny GIT's encoder.
        assert r["feature_cache"] == "file" and r["feature_cache_mb"] == round(8 * 65 * 128 * 4 / 2**20, 2)
    ev = result["eval"]
    assert ev["images"] == 4 and min(ev[f"{k}_s_per_image"] for k in ("previous", "uncached", "cached")) > 0
    assert ev["speedup_cached"] == pytest.approx(
        ev["previous_s_per_image"] / ev["cached_s_per_image"], abs=1e-2
    )
    # The same weights give the same reports through the previous loop, the loop now, and the cached features.
    assert ev["same_generations"] is True


def test_method_cost_bench_across_two_models_skips_what_does_not_fit():
    small = "embedded-small"
    result = last_json(
        "bench.method_cost", "--models", "embedded", small, "--only", "fft", "lora_r8_all_linear",
        "--rounds", "2", "--steps", "1", "--min-seconds", "0", "--max-memory-gb", "0.05",
    )  # fmt: skip
    rows = {(r["model"], r["config"]): r for r in result["rows"]}
    assert list(rows) == [("embedded", "fft"), ("embedded", "lora_r8_all_linear"), (small, "fft"),
                          (small, "lora_r8_all_linear")]  # fmt: skip
    # The dry-run plan's counts and memory: fp32 weights + gradients + two AdamW moments = 16 bytes a
    # trainable parameter, 4 a frozen one. LoRA r=8 on the small GIT's 37 Linear layers: 225,280.
    tiny_fft, tiny_lora = rows[("embedded", "fft")], rows[("embedded", "lora_r8_all_linear")]
    assert (tiny_fft["trainable_params"], tiny_lora["trainable_params"]) == (935_526, 75_776)
    assert tiny_fft["plan_mem_mb"] == round(935_526 * 16 / 2**20, 1)
    assert tiny_lora["plan_mem_mb"] == round(((935_526 + 75_776) * 4 + 75_776 * 12) / 2**20, 1)
    # 77 MB of plan does not fit under a 0.05 GB cap: a row that says so, no measurement, no crash.
    skipped = rows[(small, "fft")]
    assert skipped["trainable_params"] == 5_055_974 and "does not fit in 0.05 GB" in skipped["status"]
    assert "peak_mem_mb" not in skipped and "step_cpu_s" not in skipped
    ran = [tiny_fft, tiny_lora, rows[(small, "lora_r8_all_linear")]]
    assert rows[(small, "lora_r8_all_linear")]["trainable_params"] == 225_280
    for r in ran:
        assert r["status"] == "ok" and r["peak_mem_mb"] > 0
        for kind in ("cpu", "wall"):
            rounds = r[f"step_{kind}_s_rounds"]  # the median of two rounds is their mean
            assert len(rounds) == 2 and r[f"step_{kind}_s"] == pytest.approx(sum(rounds) / 2, abs=1e-4)
    assert tiny_fft["step_time_vs_fft"] == 1.0 and tiny_fft["step_time_vs_reference_fft"] == 1.0
    cpu_ratio = tiny_lora["step_cpu_s"] / tiny_fft["step_cpu_s"]
    assert tiny_lora["step_time_vs_fft"] == pytest.approx(cpu_ratio, abs=2e-3)
    peak_ratio = tiny_lora["peak_mem_mb"] / tiny_fft["peak_mem_mb"]
    assert tiny_lora["peak_mem_vs_fft"] == pytest.approx(peak_ratio, abs=2e-3)


def test_rare_labels_bench_trains_and_scores_every_label_on_test(small_data):
    from cxr_core.labels import LABELS

    root, splits = small_data
    result = last_json("bench.rare_labels", "--splits", str(splits), "--images", str(root),
                       "--settings", "uniform:0.1:1", "repeat_factor:1.0:1", "--seeds", "0")  # fmt: skip
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["uniform:0.1:1", "repeat_factor:1.0:1"]
    test, train = pd.read_csv(splits / "test_split.csv"), pd.read_csv(splits / "train_split.csv")
    for r in rows.values():
        assert set(r["per_label_f1"]) == set(LABELS)
        assert 0 <= r["test_f1_macro"] <= 1 and 0 <= r["test_f1_micro"] <= 1 and r["train_seconds"] > 0
        # The macro F1 is the mean of the 14 per-label F1s (rounded to 3 places each).
        assert r["test_f1_macro"] == pytest.approx(sum(r["per_label_f1"].values()) / 14, abs=2e-3)
        # Every positive test image of a rare finding is accounted for once: written positive, negative, or not.
        for label, d in r["diagnosis"].items():
            assert d["positives"] == int((test[label] == 1.0).sum())
            assert (d["train_positive"], d["train_negative"]) == (
                (train[label] == 1.0).sum(),
                (train[label] == 0.0).sum(),
            )
            assert d["greedy_positive"] + d["greedy_negative"] + d["greedy_unsaid"] == d["positives"]
            assert d["forced_auc"] is None or 0 <= d["forced_auc"] <= 1
    # Uniform sampling draws every image once an epoch; repeat-factor sampling draws normal images less often.
    assert set(rows["uniform:0.1:1"]["draws_per_epoch"].values()) == {1.0}
    assert rows["repeat_factor:1.0:1"]["draws_per_epoch"]["No_Finding"] < 1
