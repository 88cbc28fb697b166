"""Using the winner: jobs.export writes folders that load with transformers and peft alone (offline, from another
working directory, moved) and generate what the checkpoint in the sweep generates; jobs.predict on the test
images reproduces jobs.evaluate's numbers for that checkpoint, image by image.

All of it runs on a copy of the session's two-seed sweep (``seeds_sweep``), evaluated on test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from tests.conftest import REPO, run_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(seeds_sweep, small_data, tmp_path_factory):
    """The sweep copied (nothing here changes the shared one), evaluated on test (jobs.evaluate, unless
    test_analysis already did on the original), then three exports: the best LoRA configuration as an adapter
    (jobs.export's main, in this process: the command line's code without another start-up), the same merged
    into its base, and the best FFT configuration."""
    from cxr_core.export import choose_checkpoint, export_checkpoint
    from cxr_core.tune_runner import load_results
    from jobs.export import main

    tmp = tmp_path_factory.mktemp("export")
    results = tmp / "seeds"
    shutil.copytree(seeds_sweep, results)
    if not (results / "report" / "test_metrics.csv").is_file():
        run_module("jobs.evaluate", str(results))
    out = tmp / "exports"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main([str(results), "--method", "lora", "--out", str(out / "lora")])
    grid = load_results(results)
    lora = choose_checkpoint(results, method="lora:all_linear", grid=grid)  # a variant: the same choice here
    fft = choose_checkpoint(results, method="fft", grid=grid)
    info = {
        "lora": json.loads((out / "lora" / "cxr_export.json").read_text()),
        "merged": export_checkpoint(lora, out / "merged", merge=True),
        "fft": export_checkpoint(fft, out / "fft"),
    }
    return {"results": results, "out": out, "printed": printed.getvalue(), "lora": lora, "fft": fft, "info": info, "grid": grid,
            "root": small_data[0], "splits": small_data[1], "tmp": tmp}  # fmt: skip


def test_export_chooses_as_evaluate_and_says_so(exported):
    lora, fft, printed = exported["lora"], exported["fft"], exported["printed"]
    assert f"chose {lora.config_id} (" in printed and f"seed {lora.seed}, epoch {lora.epoch}" in printed
    assert "(adapter): load with PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(" in printed
    assert (lora.method, fft.method) == ("lora", "fft")
    source = exported["info"]["lora"]["source"]  # the command line's --method lora, the variant's choice here
    assert (source["trial_id"], source["config_id"], source["epoch"]) == (
        lora.trial_id,
        lora.config_id,
        lora.epoch,
    )
    assert {k: v["format"] for k, v in exported["info"].items()} == {"lora": "adapter", "merged": "merged",
                                                                       "fft": "full"}  # fmt: skip
    # The same checkpoint jobs.evaluate scored for that trial (each seed's best checkpoint).
    test = pd.read_csv(exported["results"] / "report" / "test_metrics.csv").set_index("trial_id")
    for choice in (lora, fft):
        assert Path(test.loc[choice.trial_id, "checkpoint"]).name == choice.checkpoint.name
        assert test.loc[choice.trial_id, "config_id"] == choice.config_id
        assert json.loads((choice.checkpoint / "trial_state.json").read_text())["epoch"] == choice.epoch
    from cxr_core.export import export_checkpoint

    before = sorted(p.name for p in (exported["out"] / "fft").iterdir())
    with pytest.raises(CxrError, match="exists and is not empty; pass a new folder"):
        export_checkpoint(fft, exported["out"] / "fft")  # an export never overwrites
    assert sorted(p.name for p in (exported["out"] / "fft").iterdir()) == before
    assert sorted(p.name for p in exported["out"].iterdir()) == ["fft", "lora", "merged"]  # no temporary left


def test_the_choice_follows_validation(exported):
    """Chosen on val_loss (no ties): the configuration with the lowest mean over seeds of each seed's lowest
    validation loss, then its seed with the lowest; computed here from the epochs table."""
    from cxr_core.export import choose_checkpoint
    from cxr_core.tune_runner import results_frame

    results = exported["results"]
    epochs = results_frame(results)
    per_trial = epochs.groupby("trial_id").agg(loss=("val_loss", "min"), method=("config/method", "first"),
                                               seed=("config/train/seed", "first"))  # fmt: skip
    per_config = per_trial.groupby("method")["loss"].mean()
    best_method = per_config.idxmin()
    best_trial = per_trial[per_trial["method"] == best_method]["loss"].idxmin()
    choice = choose_checkpoint(results, metric="val_loss", mode="min", grid=exported["grid"])
    assert (choice.method, choice.trial_id) == (best_method, best_trial)
    assert choice.value == pytest.approx(epochs.set_index(["trial_id", "epoch"]).loc[(best_trial, choice.epoch),
                                                                                      "val_loss"])  # fmt: skip
    other = "fft" if best_method == "lora" else "lora"
    named = choose_checkpoint(results, config_id=exported[other].config_id, metric="val_loss", mode="min",
                              grid=exported["grid"])  # fmt: skip
    assert named.method == other and named.how == "named with --config-id"
    assert per_trial.loc[named.trial_id, "loss"] == per_trial[per_trial["method"] == other]["loss"].min()
    with pytest.raises(
        CxrError, match=r"has no configuration of method 'sgd'; pass --method one of: 'fft', 'lora'"
    ):
        choose_checkpoint(results, method="sgd", grid=exported["grid"])


LOAD = r"""
import json, sys
from pathlib import Path
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor
from peft import PeftModel

exports, images = Path(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for name in ("lora", "merged", "fft"):
    folder = exports / name
    processor = AutoProcessor.from_pretrained(folder)
    if name == "lora":
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt").pixel_values
    ids = model.eval().generate(pixel_values=pixels)  # max_new_tokens: the export's generation_config
    out[name] = {"class": type(model).__name__, "ids": ids.tolist(),
                 "text": processor.batch_decode(ids, skip_special_tokens=True)}
out["cxr_core"] = any(m.startswith(("cxr_core", "jobs")) for m in sys.modules)
print(json.dumps(out))
"""


def _sweep_generations(choice, images: list[str]) -> list[list[int]]:
    """What the checkpoint inside the sweep generates, loaded as the sweep loads it."""
    import torch

    from cxr_core.config import trial_config
    from cxr_core.images import read_image
    from cxr_core.model import load_processor
    from cxr_core.trial import load_checkpoint_model

    cfg = trial_config(choice.arm)
    model = load_checkpoint_model(cfg, choice.checkpoint).eval()
    processor = load_processor(cfg.model)
    pixels = processor.image_processor(images=[read_image(p).convert("RGB") for p in images],
                                       return_tensors="pt")["pixel_values"]  # fmt: skip
    with torch.no_grad():
        return model.generate(pixel_values=pixels, max_new_tokens=cfg.evaluation.max_new_tokens).tolist()


def test_exports_load_alone_elsewhere_and_generate_as_in_the_sweep(exported):
    from cxr_core.dataset import split_image_paths
    from cxr_core.prepare import read_split

    moved = exported["tmp"] / "elsewhere" / "moved"
    shutil.copytree(exported["out"], moved)  # a copy elsewhere: nothing may point back into the sweep or clone
    for path in moved.rglob("*.json"):
        assert str(REPO) not in path.read_text(), path
    adapter = json.loads((moved / "lora" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "base"
    images = split_image_paths(read_split(exported["splits"], "test"), exported["root"])[:8]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run([sys.executable, "-c", LOAD, str(moved), json.dumps(images)], cwd=moved.parent,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got.pop("cxr_core") is False  # transformers and peft alone
    assert {k: v["class"] for k, v in got.items()} == {"lora": "PeftModel", "merged": "GitForCausalLM",
                                                       "fft": "GitForCausalLM"}  # fmt: skip
    lora, fft = _sweep_generations(exported["lora"], images), _sweep_generations(exported["fft"], images)
    assert got["lora"]["ids"] == lora and got["merged"]["ids"] == lora and got["fft"]["ids"] == fft
    assert lora != fft  # two different models: the comparison can fail
    assert len(lora[0]) > 5 and all(got["fft"]["text"])


def test_model_card(exported):
    from huggingface_hub import ModelCard

    lora, results = exported["lora"], exported["results"]
    epochs = pd.read_csv(results / "report" / "test_metrics.csv").set_index("trial_id")
    for name, library in (("lora", "peft"), ("merged", "transformers"), ("fft", "transformers")):
        card = ModelCard.load(exported["out"] / name / "README.md")
        assert card.data.library_name == library and card.data.pipeline_tag == "image-to-text"
        assert "synthetic-data" in card.data.tags and card.data.base_model is None  # the embedded base: local
        choice = exported["fft"] if name == "fft" else lora
        evals = {(e.dataset_split, e.metric_type): e.metric_value for e in card.data.eval_results}
        assert evals[("validation", "label_f1_micro")] == pytest.approx(
            choice.reported["label_f1_micro"], abs=1e-6
        )
        assert evals[("validation", "bleu4")] == pytest.approx(choice.reported["bleu4"], abs=1e-6)
        assert evals[("test", "bleu4")] == pytest.approx(epochs.loc[choice.trial_id, "bleu4"], abs=1e-6)
        text = card.text
        for phrase in (f"# seeds: {choice.config_id}", "Not a medical device", "**synthetic** images",
                       "split by patient (no patient is in two splits)", "## Test", f"seed {choice.seed}",
                       f"{int(choice.reported['trainable_params']):,}", "| bootstrap |"):  # fmt: skip
            assert phrase in text, (name, phrase)
        assert "has not been evaluated" not in text
    text = ModelCard.load(exported["out"] / "lora" / "README.md").text
    assert "PeftModel.from_pretrained(base, folder)" in text and 'folder / "base"' in text
    # The test row of the card: the mean over the two evaluated seeds and its bootstrap interval around it.
    tests = epochs[epochs["config_id"] == lora.config_id]
    line = next(x for x in text.split("## Test")[1].splitlines() if x.startswith("| unparsed_rate |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(tests.loc[lora.trial_id, "unparsed_rate"], abs=5e-4)
    mean, lo, hi = (float(v) for v in cells[2].replace("[", "").replace("]", "").replace(",", "").split())
    assert mean == pytest.approx(tests["unparsed_rate"].mean(), abs=5e-4) and lo <= mean <= hi
    assert cells[3:] == ["bootstrap", "2"]


def test_predict_reproduces_evaluate_on_the_test_images(exported, capsys):
    from cxr_core.metrics import report_metrics
    from cxr_core.prepare import read_split
    from cxr_core.records import load_records
    from jobs.predict import main

    lora, out = exported["lora"], exported["tmp"] / "predictions.csv"
    main([str(exported["out"] / "lora"), "--csv", str(exported["splits"] / "test_split.csv"), "--image-root",
          str(exported["root"]), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    pred = pd.read_csv(out)
    test = read_split(exported["splits"], "test")
    assert list(pred.columns[:4]) == ["path", "status", "reason", "report"] and set(LABELS) <= set(pred.columns)
    assert (
        len(pred) == len(test)
        and (pred["status"] == "ok").all()
        and (pred["uncertain_policy"] == "negative").all()
    )
    assert f"predict: {len(test)}/{len(test)} images (100%)" in err
    assert f"predict: wrote {len(test)} rows to {out} ({len(test)} reports, 0 images skipped)" in err
    mine = (
        pd.read_csv(exported["results"] / "report" / "test_metrics.csv")
        .set_index("trial_id")
        .loc[lora.trial_id]
    )
    metrics = report_metrics(
        pred["report"].fillna("").tolist(), test["mini_report"].tolist(), uncertain="negative"
    )
    for key in ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "label_precision_micro", "exact_match",
                "unparsed_rate", "bleu1", "bleu2", "bleu4"):  # fmt: skip
        assert metrics[key] == pytest.approx(mine[key], abs=1e-9), key
    assert mine["bleu1"] > 0  # the texts are compared, not only empty label sets
    # Image by image: the labels, sentences and unparsed sentences jobs.evaluate kept for this checkpoint.
    rec = load_records(str(exported["results"] / "report" / "test_records" / f"{lora.trial_id}.npz"))
    rows = pred.iloc[rec.rows]
    np.testing.assert_array_equal(rows[list(LABELS)].to_numpy(dtype=float), rec.pred)
    np.testing.assert_array_equal(rows["sentences"].to_numpy(), rec.sentences)
    np.testing.assert_array_equal(rows["unparsed_sentences"].to_numpy(), rec.unparsed)
    assert (rows["unparsed"].to_numpy() == (rec.unparsed > 0)).all()


def _bad_images(folder: Path, good: list[str]) -> Path:
    """Two good images, a truncated JPEG, an empty PNG and a note in ``folder``; returns it."""
    folder.mkdir()
    for i, path in enumerate(good):
        shutil.copy(path, folder / f"good{i}.jpg")
    data = Path(good[0]).read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_skips_or_fails_on_bad_images_as_training_does(exported):
    from cxr_core.dataset import split_image_paths
    from cxr_core.mini_report import parse_report
    from cxr_core.predict import find_images, load_exported, predict, read_settings
    from cxr_core.prepare import read_split

    good = split_image_paths(read_split(exported["splits"], "test"), exported["root"])[:2]
    folder = _bad_images(exported["tmp"] / "new", good)
    dicom = folder / "scan.dcm"
    dicom.write_bytes(b"DICM")
    paths = find_images([str(folder), str(dicom)])
    assert [Path(p).name for p in paths] == ["cut.jpg", "empty.png", "good0.jpg", "good1.jpg", "scan.dcm"]
    model, processor = load_exported(exported["out"] / "fft")
    settings = read_settings(exported["out"] / "fft")
    assert (settings.image_policy, settings.max_new_tokens, settings.uncertain) == ("skip", 40, "negative")
    frame = predict(model, processor, paths, settings=settings, device="cpu")
    assert list(frame["status"]) == ["skipped", "skipped", "ok", "ok", "skipped"]
    reasons = dict(zip(frame["path"].map(lambda p: Path(p).name), frame["reason"], strict=True))
    assert "truncated" in reasons["cut.jpg"] and "cannot identify image file" in reasons["empty.png"]
    assert "DICOM is not read" in reasons["scan.dcm"]
    for _, row in frame[frame["status"] == "ok"].iterrows():
        values = parse_report(row["report"]).values
        assert row["report"] and np.array_equal(row[list(LABELS)].to_numpy(dtype=float), values, equal_nan=True)
    settings.image_policy = "error"
    with pytest.raises(CxrError, match=r"image .*cut\.jpg is missing or unreadable \(unreadable: image file is "
                       r"truncated.*pass --image-policy skip"):  # fmt: skip
        predict(model, processor, paths, settings=settings, device="cpu")


def test_predict_command_refuses_what_it_cannot_read(exported, capsys):
    """Refused before a model is loaded (in process: main_guard's one line and exit 2)."""
    from jobs.predict import main

    cases = [
        (["--csv", str(exported["splits"] / "test_split.csv")], "--csv and --image-root go together"),
        ([str(exported["tmp"] / "nowhere.png")], "does not exist; pass image files or folders"),
        (["--batch-size", "0", str(exported["out"])], "--batch-size must be a positive integer, got 0"),
    ]
    for args, phrase in cases:
        with pytest.raises(SystemExit) as stop:
            main([str(exported["out"] / "fft"), *args])
        assert stop.value.code == 2
        assert phrase in capsys.readouterr().err.strip().splitlines()[-1]
    good = str(exported["out"] / "fft" / "README.md")  # a file that exists; the model folder holds no model
    with pytest.raises(SystemExit):
        main([str(exported["out"]), good])
    assert "holds neither a model (config.json) nor an adapter" in capsys.readouterr().err
