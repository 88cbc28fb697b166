"""Per-image evaluation records: what they hold, that they reproduce the split's metrics, and their format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_core import bootstrap
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.metrics import report_metrics
from cxr_core.mini_report import mini_report
from cxr_core.records import (
    align,
    from_bytes,
    image_records,
    load_records,
    reference_labels,
    save_records,
    take,
    to_bytes,
)


def _labels(**values):
    out = dict.fromkeys(LABELS, math.nan)
    out.update(values)
    return out


def test_records_parse_the_generated_reports_and_round_trip(tmp_path):
    generated = [
        mini_report(_labels(Edema=1.0, Pneumothorax=0.0)),
        mini_report(_labels(Cardiomegaly=-1.0)) + " Something the parser cannot read.",
        "",
    ]
    rec = image_records(generated, rows=[4, 7, 9], loss_sum=[1.5, 2.0, 0.25], tokens=[10, 12, 3])
    edema, ptx, cardio = (LABELS.index(x) for x in ("Edema", "Pneumothorax", "Cardiomegaly"))
    assert rec.pred[0, edema] == 1.0 and rec.pred[0, ptx] == 0.0 and np.isnan(rec.pred[0, cardio])
    assert rec.pred[1, cardio] == -1.0 and np.isnan(rec.pred[2]).all()
    assert rec.sentences.tolist() == [2, 2, 0] and rec.unparsed.tolist() == [0, 1, 0]
    path = save_records(rec, tmp_path / "records" / "val_epoch001.npz")
    back = load_records(str(path))
    for name in ("rows", "loss_sum", "tokens", "sentences", "unparsed"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rec, name))
    np.testing.assert_array_equal(np.isnan(back.pred), np.isnan(rec.pred))
    np.testing.assert_array_equal(np.nan_to_num(back.pred, nan=9), np.nan_to_num(rec.pred, nan=9))
    assert back.pred.dtype == float and len(to_bytes(rec)) < 2000  # compact: int8 codes, compressed
    with pytest.raises(CxrError, match="not a per-image record file"):
        from_bytes(b"not an npz")


def test_align_and_take_keep_common_rows_in_order():
    a = image_records(["", "", ""], rows=[0, 2, 5], loss_sum=[1, 2, 3], tokens=[1, 1, 1])
    b = image_records(["", ""], rows=[5, 0], loss_sum=[7, 8], tokens=[1, 1])
    rows = align([a, b])
    assert rows.tolist() == [0, 5]
    assert take(a, rows).loss_sum.tolist() == [1, 3] and take(b, rows).loss_sum.tolist() == [8, 7]


def test_records_reproduce_the_reported_metrics(small_data):
    """evaluate_model's records give back, through the bootstrap's metric code, exactly the metrics it reports;
    the per-image losses add up to the model's own token-weighted loss."""
    from cxr_core.config import trial_config
    from cxr_core.trial import MemoryMeter, evaluate, setup

    root, splits = small_data
    cfg = trial_config(
        {"data": {"split_dir": str(splits), "image_root": str(root), "max_train": 8, "max_val": 20,
                  "cache_dir": "none"}, "evaluation": {"max_new_tokens": 40, "batch_size": 8}}
    )  # fmt: skip
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    metrics, generated, rec = evaluate(s, s.val)
    assert rec.rows.tolist() == list(range(len(s.val)))
    truth = reference_labels(splits, "val")[rec.rows]
    seeds = bootstrap.SeedRecords(pred=rec.pred[None], loss_sum=rec.loss_sum[None], tokens=rec.tokens[None],
                                  unparsed=rec.unparsed[None], sentences=rec.sentences[None])  # fmt: skip
    for m in ("label_f1_micro", "label_f1_macro", "label5_f1_macro", "unparsed_rate"):
        assert bootstrap.point(truth, seeds, metric=m) == pytest.approx(metrics[m], abs=1e-6), m
    # The loss is summed in float32 by the trial and in float64 here: equal to float32's relative precision.
    assert bootstrap.point(truth, seeds, metric="val_loss") == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert report_metrics(generated, s.val.reports)["label_f1_micro"] == metrics["label_f1_micro"]
    # The model's own loss over the same batch (mean over non-ignored tokens) equals sum(loss) / sum(tokens).
    from cxr_core.dataset import batches

    batch = next(batches(s.val, batch_size=len(s.val), pad_id=s.pad_id))
    with torch.no_grad():
        loss = s.model(**batch).loss.item()
    assert rec.loss_sum.sum() / rec.tokens.sum() == pytest.approx(loss, rel=1e-5)
