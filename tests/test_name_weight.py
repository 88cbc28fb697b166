"""``train.name_weight``: the names of findings stated present weigh more in the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from cxr_core.config import trial_config
from cxr_core.dataset import name_weights, template_marks, text_batch
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mini_report import mini_report
from cxr_core.model import load_model, load_processor
from cxr_core.trial import token_losses

NAN = float("nan")


def _labels(**values) -> list[float]:
    return [values.get(name, NAN) for name in LABELS]


def test_only_the_names_of_present_findings_weigh_more():
    tok = load_processor("embedded").tokenizer
    reports = [
        # present, absent, uncertain and present again; then a normal study; the template's own sentences
        mini_report(
            _labels(Cardiomegaly=1.0, Edema=0.0, Pneumonia=-1.0, Pleural_Effusion=1.0, Support_Devices=1.0)
        ),
        mini_report(_labels(Pneumothorax=0.0, No_Finding=1.0)),
    ]
    assert reports[0].startswith("Evidence of cardiomegaly is present. No evidence of edema.")
    batch = text_batch([tok(r).input_ids for r in reports], tok.pad_token_id)
    w = name_weights(batch["labels"], template_marks(tok), 4.0)
    heavy = [tok.convert_ids_to_tokens([t for t, x in zip(row, wr, strict=True) if x == 4.0])
             for row, wr in zip(batch["labels"].tolist(), w.tolist(), strict=True)]  # fmt: skip
    assert heavy == [["cardiomegaly", "pleural", "effusion", "support", "devices"], []]
    assert set(w[0].tolist()) == {1.0, 4.0}  # the first report is the longest: no padding
    n = len(tok(reports[1]).input_ids)
    assert w[1, :n].tolist() == [1.0] * n and w[1, n:].tolist() == [0.0] * (w.shape[1] - n)  # padding weighs 0
    assert torch.equal(
        name_weights(batch["labels"], template_marks(tok), 1.0), (batch["labels"] != -100).float()
    )


def test_token_losses_are_the_models_own_loss():
    # The weighted objective is built from token_losses; with every weight 1 it must be GIT's own loss.
    tok = load_processor("embedded").tokenizer
    model = load_model("embedded").eval()
    reports = [mini_report(_labels(Edema=1.0, Pneumothorax=0.0)), mini_report(_labels(No_Finding=1.0))]
    batch = text_batch([tok(r).input_ids for r in reports], tok.pad_token_id)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels, **batch)
        ce, counted = token_losses(out.logits, batch["labels"])
    assert counted.sum() == (batch["labels"][:, 1:] != -100).sum()
    assert float(ce.sum() / counted.sum()) == pytest.approx(float(out.loss), rel=1e-5)


@pytest.mark.parametrize("bad", [0.5, 0, math.inf])
def test_a_name_weight_below_one_is_refused(bad):
    with pytest.raises(CxrError, match=r"train\.name_weight"):
        trial_config({"method": "fft", "train": {"name_weight": bad}})


@pytest.mark.parametrize("method", ["fft", "lora"])  # lora on text: the frozen tower's cached features path
def test_a_weighted_epoch_steps_differently_and_reports_the_models_own_loss(method, small_data):
    from cxr_core.trial import MemoryMeter, setup, train_epoch

    root, splits = small_data

    def one_step(name_weight: float):
        cfg = trial_config({
            "method": method, "model": "embedded",
            "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 8, "max_val": 8},
            "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "num_threads": 1, "warmup_ratio": 0.0,
                      "name_weight": name_weight},
            "lora": {"r": 4, "target_modules": "text"},
        })  # fmt: skip
        s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
        loss = train_epoch(s, 0)["train_loss"]  # one batch: its loss is taken before the step
        return loss, torch.cat([p.detach().flatten() for p in s.model.parameters() if p.requires_grad])

    plain, weighted = one_step(1.0), one_step(5.0)
    assert weighted[0] == pytest.approx(plain[0], rel=1e-5)  # the same model's own loss on the same batch
    assert not torch.allclose(weighted[1], plain[1])  # but a different step
