import pytest

from cxr_core.errors import CxrError
from cxr_core.metrics import report_metrics


def test_label_metrics_on_hand_written_reports():
    refs = [
        "Evidence of edema is present. Evidence of pleural effusion is present.",
        "There is suspicion of cardiomegaly. Evidence of atelectasis is present.",
        "The chest X-ray appears normal with no acute findings.",
    ]
    gens = [
        "Evidence of edema is present. No evidence of pleural effusion.",  # TP edema, FN effusion
        "Evidence of cardiomegaly is present. Evidence of atelectasis is present. The heart is huge.",
        "the chest x - ray appears normal with no acute findings .",  # TP no finding (decoded spacing)
    ]
    m = report_metrics(gens, refs)  # uncertain counts as negative
    # Positives (ref): edema, effusion, atelectasis, no_finding = 4; predicted: edema, cardiomegaly,
    # atelectasis, no_finding = 4; TP = 3 -> micro P = R = F1 = 0.75.
    assert m["label_precision_micro"] == pytest.approx(0.75)
    assert m["label_recall_micro"] == pytest.approx(0.75)
    assert m["label_f1_micro"] == pytest.approx(0.75)
    # Macro over 14: F1 = 1 for edema, atelectasis, no_finding; 0 for effusion and cardiomegaly; 0 for the
    # 9 labels absent on both sides (zero_division=0) -> 3/14.
    assert m["label_f1_macro"] == pytest.approx(3 / 14)
    # Competition 5: atelectasis 1, cardiomegaly 0 (FP), consolidation 0, edema 1, effusion 0 -> 2/5.
    assert m["label5_f1_macro"] == pytest.approx(2 / 5)
    # 6 generated sentences (2 + 3 + 1), one unreadable.
    assert m["unparsed_rate"] == pytest.approx(1 / 6)
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["per_label"]["Edema"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}

    # Uncertain counted as positive: the reference cardiomegaly (-1.0) becomes a positive, so the
    # generated "evidence of cardiomegaly" is now a TP: TP 4, pred 4, ref 5.
    p = report_metrics(gens, refs, uncertain="positive")
    assert p["label_precision_micro"] == pytest.approx(1.0)
    assert p["label_recall_micro"] == pytest.approx(4 / 5)
    assert p["uncertain_policy"] == "positive"


def test_bleu_perfect_and_zero():
    refs = ["Evidence of edema is present.", "No evidence of fracture."]
    assert report_metrics(refs, refs)["bleu4"] == pytest.approx(1.0)
    assert report_metrics(["zzz qqq", "yyy"], refs)["bleu1"] == pytest.approx(0.0)


def test_unknown_policy():
    with pytest.raises(CxrError, match="uncertain policy"):
        report_metrics(["x"], ["y"], uncertain="maybe")
