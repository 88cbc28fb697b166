"""Paired two-level bootstrap (cxr_core.bootstrap): metric definitions, intervals, verdicts and sentences."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from cxr_core import bootstrap as bs
from cxr_core.errors import CxrError
from cxr_core.labels import COMPETITION5, LABELS
from cxr_core.metrics import label_metrics

CODES = [1.0, 0.0, -1.0, np.nan]
PREVALENCE = [0.25, 0.1, 0.05, 0.6]
L = len(LABELS)


def random_values(rng, shape):
    return rng.choice(CODES, size=shape, p=PREVALENCE)


def noisy_copy(rng, truth, n_seeds, keep):
    """(S, N, 14) predictions: each value copied from truth with probability ``keep``, else random."""
    keep = np.broadcast_to(np.asarray(keep, dtype=float).reshape(-1, 1, 1), (n_seeds, *truth.shape))
    copy = rng.random((n_seeds, *truth.shape)) < keep
    return np.where(copy, truth, random_values(rng, (n_seeds, *truth.shape)))


def flipped(truth):
    """Wrong on every label of every image: present <-> absent (uncertain and unmentioned become present)."""
    return np.where(truth == 1.0, 0.0, 1.0)[None]


SENTENCE_FORMS = {
    "a_better": r"^.+ is better than .+ on \w+ \S+: difference [+-]\d\.\d{3} \(95% interval [+-]\d\.\d{3} to "
    r"[+-]\d\.\d{3}\), P\(better\) \d\.\d\d, [\d,]+ images, \d+ vs \d+ seeds?\.$",
    "b_better": r"^.+ is worse than .+ on \w+ \S+: difference [+-]\d\.\d{3} \(95% interval [+-]\d\.\d{3} to "
    r"[+-]\d\.\d{3}\), P\(better\) \d\.\d\d, [\d,]+ images, \d+ vs \d+ seeds?\.$",
    "equivalent": r"^.+ and .+ are equivalent within ±[\d.]+ on \w+ \S+: difference [+-]\d\.\d{3} "
    r"\(90% interval [+-]\d\.\d{3} to [+-]\d\.\d{3}\), P\(better\) \d\.\d\d, [\d,]+ images, \d+ vs \d+ "
    r"seeds?\.$",
    "inconclusive": r"^The data do not separate .+ and .+ on \w+ \S+: difference [+-]\d\.\d{3} \(95% interval "
    r"[+-]\d\.\d{3} to [+-]\d\.\d{3}, width \d\.\d{3}\), P\(better\) \d\.\d\d, [\d,]+ images, \d+ vs \d+ "
    r"seeds?; .*(would settle it|would not|more of both)\.$",
}


def assert_sentence(result, metric="label_f1_micro"):
    text = bs.verdict_sentence("LoRA r=16", "FFT lr=0.002", result, metric=metric)
    matches = [v for v, pattern in SENTENCE_FORMS.items() if re.match(pattern, text)]
    assert matches == [result["verdict"]], text
    return text


@pytest.mark.parametrize("uncertain", ["negative", "positive"])
def test_point_equals_label_metrics_on_random_data(uncertain):
    rng = np.random.default_rng(1)
    truth = random_values(rng, (80, L))
    pred = noisy_copy(rng, truth, 2, keep=0.5)
    # A label absent on both sides (F1 0 by zero_division, still in the macro mean) and one never predicted.
    truth[:, LABELS.index("Fracture")] = pred[:, :, LABELS.index("Fracture")] = np.nan
    pred[:, :, LABELS.index("Edema")] = 0.0
    records = bs.SeedRecords(pred)
    per_seed = [label_metrics(truth, pred[s], uncertain=uncertain) for s in range(2)]
    for prefix in ("label", "label5"):
        for stat in ("f1", "precision", "recall"):
            for avg in ("micro", "macro"):
                name = f"{prefix}_{stat}_{avg}"
                expected = np.mean([m[name] for m in per_seed])
                assert bs.point(truth, records, metric=name, uncertain=uncertain) == pytest.approx(
                    expected, abs=1e-12
                )
    for label in LABELS:
        expected = np.mean([m["per_label"][label]["f1"] for m in per_seed])
        assert bs.point(truth, records, metric=f"f1/{label}", uncertain=uncertain) == pytest.approx(expected)
    assert bs.point(truth, records, metric="f1/Fracture", uncertain=uncertain) == 0.0
    assert per_seed[0]["label_f1_macro"] > 0  # the data are not degenerate


def test_loss_and_unparsed_rate_are_ratios_of_sums():
    truth = np.full((3, L), np.nan)
    records = bs.SeedRecords(
        np.full((2, 3, L), np.nan),
        loss_sum=[[10.0, 2.0, 3.0], [4.0, 4.0, 4.0]],
        tokens=[[10, 1, 1], [4, 4, 4]],
        unparsed=[[0, 1, 0], [2, 0, 0]],
        sentences=[[4, 4, 2], [5, 3, 2]],
    )
    # Token-weighted: seed 0 = 15 / 12 (not the mean of 1, 2, 3), seed 1 = 12 / 12.
    assert bs.point(truth, records, metric="val_loss") == pytest.approx((15 / 12 + 1.0) / 2)
    assert bs.point(truth, records, metric="test_loss") == bs.point(truth, records, metric="val_loss")
    assert bs.point(truth, records, metric="unparsed_rate") == pytest.approx((1 / 10 + 2 / 10) / 2)
    assert not bs.higher_is_better("val_loss") and not bs.higher_is_better("unparsed_rate")
    assert bs.higher_is_better("label_f1_micro") and bs.higher_is_better("f1/Edema")
    assert bs.metric_range("test_loss") == (0.0, np.inf) and bs.metric_range("label5_f1_macro") == (0.0, 1.0)


def test_identical_configurations_are_equivalent():
    rng = np.random.default_rng(2)
    truth = random_values(rng, (200, L))
    one = bs.SeedRecords(noisy_copy(rng, truth, 1, keep=0.7))
    resampler = bs.Resampler(200, n_boot=500, seed=3)
    r = bs.compare(truth, one, one, metric="label_f1_micro", resampler=resampler)
    # One seed: both sides see the same images in every resample -> every difference is exactly 0.
    assert (r["difference"], r["lo"], r["hi"], r["p_a_better"]) == (0.0, 0.0, 0.0, 0.5)
    assert r["verdict"] == "equivalent" and r["settle"] is None
    # Three seeds: seed draws are independent per side, so resample differences spread around 0 symmetrically.
    three = bs.SeedRecords(noisy_copy(rng, truth, 3, keep=0.9))
    r = bs.compare(truth, three, three, metric="label_f1_macro", resampler=resampler)
    assert r["difference"] == 0.0 and r["lo"] < 0 < r["hi"]
    assert r["verdict"] == "equivalent" and abs(r["p_a_better"] - 0.5) < 0.1
    assert_sentence(r)
    # TOST: the 90% interval (not the 95% one) must fit strictly inside +-margin.
    edge90, edge95 = max(-r["lo90"], r["hi90"]), max(-r["lo"], r["hi"])
    assert edge90 < edge95
    for margin, verdict in ((edge90 * 0.99, "inconclusive"), ((edge90 + edge95) / 2, "equivalent")):
        again = bs.compare(truth, three, three, metric="label_f1_macro", resampler=resampler, margin=margin)
        assert again["verdict"] == verdict and again["lo90"] == r["lo90"]


def test_model_right_everywhere_beats_one_that_misses_everywhere():
    rng = np.random.default_rng(4)
    truth = random_values(rng, (60, L))
    right, wrong = bs.SeedRecords(truth[None].copy()), bs.SeedRecords(flipped(truth))
    resampler = bs.Resampler(60, n_boot=300, seed=0)
    r = bs.compare(truth, right, wrong, metric="label_f1_micro", resampler=resampler)
    assert r["difference"] == pytest.approx(1.0) and r["verdict"] == "a_better" and r["p_a_better"] > 0.99
    assert r["lo"] > 0.9
    back = bs.compare(truth, wrong, right, metric="label_f1_micro", resampler=resampler)
    assert back["verdict"] == "b_better" and back["p_a_better"] < 0.01 and back["hi"] < -0.9
    assert_sentence(r) and assert_sentence(back)
    # Lower is better for losses: the side with the smaller loss wins, and "better" follows that.
    low = bs.SeedRecords(truth[None], loss_sum=np.ones((1, 60)), tokens=np.ones((1, 60)))
    high = bs.SeedRecords(truth[None], loss_sum=np.full((1, 60), 3.0), tokens=np.ones((1, 60)))
    loss = bs.compare(truth, low, high, metric="val_loss", resampler=resampler)
    assert (
        loss["difference"] == pytest.approx(-2.0)
        and loss["verdict"] == "a_better"
        and loss["p_a_better"] == 1.0
    )


@pytest.mark.parametrize("n_images", [1, 3, 40])
def test_intervals_stay_inside_the_metric_range_on_extreme_data(n_images):
    rng = np.random.default_rng(n_images)
    truth = random_values(rng, (n_images, L))
    truth[0, 0] = 1.0  # at least one positive
    resampler = bs.Resampler(n_images, n_boot=200, seed=1)
    cases = {
        "right": truth[None].repeat(2, axis=0),
        "wrong": flipped(truth),
        "noisy": noisy_copy(rng, truth, 3, 0.5),
    }
    for name, pred in cases.items():
        for metric in (
            "label_f1_micro",
            "label_f1_macro",
            "label5_f1_macro",
            "label_recall_micro",
            "f1/Atelectasis",
        ):
            r = bs.interval(truth, bs.SeedRecords(pred), metric=metric, resampler=resampler)
            assert 0.0 <= r["lo"] <= r["hi"] <= 1.0, (name, metric, r)
            assert r["seed_min"] <= r["mean"] <= r["seed_max"]
    assert (
        bs.interval(truth, bs.SeedRecords(cases["wrong"]), metric="label_f1_micro", resampler=resampler)["hi"]
        == 0
    )
    right = bs.interval(truth, bs.SeedRecords(cases["right"]), metric="label_f1_micro", resampler=resampler)
    assert right["lo"] == right["mean"] == 1.0


def test_inconclusive_on_a_tiny_split_says_what_would_settle_it():
    rng = np.random.default_rng(5)
    truth = random_values(rng, (12, L))
    # Near-equal models whose three seeds agree: all the uncertainty is in the 12 images.
    a = bs.SeedRecords(noisy_copy(rng, truth, 1, keep=0.6).repeat(3, axis=0))
    b = bs.SeedRecords(noisy_copy(rng, truth, 1, keep=0.55).repeat(3, axis=0))
    r = bs.compare(truth, a, b, metric="label_f1_micro", resampler=bs.Resampler(12, n_boot=1000, seed=0))
    assert r["verdict"] == "inconclusive" and r["lo"] < 0 < r["hi"]
    # Image variance scales as 1/N: settling needs the variance cut by r = the looser of (|d| / h95)^2 and
    # ((margin - |d|) / h90)^2, i.e. 12 / r images; seed variance is 0, so more seeds cannot help.
    d, h90 = abs(r["difference"]), (r["hi90"] - r["lo90"]) / 2
    needed = 12 / max((d / r["half_width"]) ** 2, ((r["margin"] - d) / h90) ** 2 if d < r["margin"] else 0)
    assert r["settle"] == {"images": math.ceil(needed), "seeds": None} and r["settle"]["images"] > 12
    text = assert_sentence(r)
    assert text.startswith("The data do not separate LoRA r=16 and FFT lr=0.002 on validation label_f1_micro")
    assert text.endswith(
        ", 12 images, 3 vs 3 seeds; about 550 images would settle it; more seeds alone would not."
    )


def test_settle_points_at_seeds_when_seeds_disagree():
    rng = np.random.default_rng(7)
    truth = random_values(rng, (2000, L))
    a = bs.SeedRecords(noisy_copy(rng, truth, 3, keep=[0.5, 0.7, 0.9]))
    b = bs.SeedRecords(noisy_copy(rng, truth, 3, keep=[0.55, 0.72, 0.85]))
    r = bs.compare(truth, a, b, metric="label_f1_micro", resampler=bs.Resampler(2000, n_boot=300, seed=0))
    assert r["verdict"] == "inconclusive"
    assert r["settle"]["images"] is None and r["settle"]["seeds"] > 20
    assert assert_sentence(r).endswith("seeds per side would settle it; more images alone would not.")


def test_one_seed_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(6)
    truth = random_values(rng, (300, L))
    pred = noisy_copy(rng, truth, 1, keep=0.6)
    ours = bs.interval(
        truth, bs.SeedRecords(pred), metric="label_f1_micro", resampler=bs.Resampler(300, n_boot=4000)
    )
    t, p = truth == 1.0, pred[0] == 1.0
    tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)  # per image, paired rows

    def micro_f1(tp, fp, fn, axis=-1):
        return 2 * tp.sum(axis) / (2 * tp.sum(axis) + fp.sum(axis) + fn.sum(axis))

    ref = stats.bootstrap((tp, fp, fn), micro_f1, paired=True, vectorized=True, n_resamples=4000,
                          method="percentile", random_state=np.random.default_rng(0))  # fmt: skip
    assert ours["mean"] == pytest.approx(micro_f1(tp, fp, fn))
    assert ours["hi"] - ours["lo"] > 0.03  # a real interval, not a point
    assert ours["lo"] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert ours["hi"] == pytest.approx(ref.confidence_interval.high, abs=0.01)


def test_seed_variance_widens_intervals():
    rng = np.random.default_rng(7)
    truth = random_values(rng, (400, L))
    steady = noisy_copy(rng, truth, 1, keep=0.7).repeat(3, axis=0)  # three identical seeds
    erratic = noisy_copy(rng, truth, 3, keep=[0.4, 0.7, 0.95])  # seeds that disagree a lot
    resampler = bs.Resampler(400, n_boot=500, seed=0)
    width = {}
    for name, pred in (("steady", steady), ("erratic", erratic)):
        r = bs.interval(truth, bs.SeedRecords(pred), metric="label_f1_micro", resampler=resampler)
        width[name] = r["hi"] - r["lo"]
    assert width["erratic"] > 3 * width["steady"]
    other = bs.SeedRecords(noisy_copy(rng, truth, 3, keep=0.7))
    steady_cmp = bs.compare(truth, bs.SeedRecords(steady), other, metric="label_f1_micro", resampler=resampler)
    erratic_cmp = bs.compare(
        truth, bs.SeedRecords(erratic), other, metric="label_f1_micro", resampler=resampler
    )
    assert erratic_cmp["half_width"] > 2 * steady_cmp["half_width"]


def test_same_seed_same_results_and_independent_streams():
    rng = np.random.default_rng(8)
    truth = random_values(rng, (50, L))
    a, b = bs.SeedRecords(noisy_copy(rng, truth, 3, 0.6)), bs.SeedRecords(noisy_copy(rng, truth, 2, 0.5))
    r1, r2, r3 = (
        bs.Resampler(50, n_boot=200, seed=9),
        bs.Resampler(50, n_boot=200, seed=9),
        bs.Resampler(50, n_boot=200),
    )
    assert r1.weights.dtype == np.float32 and r1.weights.shape == (200, 50)
    assert np.array_equal(r1.weights.sum(axis=1), np.full(200, 50.0))
    assert np.array_equal(r1.weights, r2.weights) and not np.array_equal(r1.weights, r3.weights)
    assert np.array_equal(r1.seed_draws(3, stream=1), r2.seed_draws(3, stream=1))
    assert not np.array_equal(r1.seed_draws(3, stream=1), r1.seed_draws(3, stream=2))
    assert r1.seed_draws(3, stream=0).min() == 0 and r1.seed_draws(3, stream=0).max() == 2
    opts = {"metric": "label_f1_macro", "margin": 0.01}
    assert bs.compare(truth, a, b, resampler=r1, **opts) == bs.compare(truth, a, b, resampler=r2, **opts)
    assert bs.interval(truth, a, metric="label_f1_micro", resampler=r1) == bs.interval(
        truth, a, metric="label_f1_micro", resampler=r2
    )


def test_verdict_sentence_exact_text():
    result = {"difference": 0.041, "lo": 0.018, "hi": 0.064, "lo90": 0.022, "hi90": 0.060, "p_a_better": 1.0,
              "verdict": "a_better", "margin": 0.02, "n_images": 540,
              "n_seeds_a": 3, "n_seeds_b": 3}  # fmt: skip
    assert bs.verdict_sentence("LoRA all_linear r=16", "FFT lr=0.002", result, metric="label_f1_micro") == (
        "LoRA all_linear r=16 is better than FFT lr=0.002 on validation label_f1_micro: difference +0.041 "
        "(95% interval +0.018 to +0.064), P(better) 1.00, 540 images, 3 vs 3 seeds."
    )
    equal = result | {
        "verdict": "equivalent",
        "difference": -0.004,
        "lo90": -0.015,
        "hi90": 0.007,
        "p_a_better": 0.3,
    }
    assert bs.verdict_sentence("A", "B", equal, metric="label_f1_micro", split="test") == (
        "A and B are equivalent within ±0.02 on test label_f1_micro: difference -0.004 (90% interval -0.015 to "
        "+0.007), P(better) 0.30, 540 images, 3 vs 3 seeds."
    )
    open_ = result | {"verdict": "inconclusive", "lo": -0.02, "hi": 0.1, "settle": {"images": 2371, "seeds": 9}}
    assert bs.verdict_sentence("A", "B", open_, metric="label_f1_micro").endswith(
        "(95% interval -0.020 to +0.100, width 0.120), P(better) 1.00, 540 images, 3 vs 3 seeds; "
        "about 2,400 images or 9 seeds per side would settle it."
    )
    neither = open_ | {"settle": {"images": None, "seeds": None}}
    assert bs.verdict_sentence("A", "B", neither, metric="label_f1_micro").endswith(
        "; neither more images nor more seeds alone would settle it, only more of both."
    )
    for form in SENTENCE_FORMS:
        assert_sentence(result | {"verdict": form, "settle": {"images": None, "seeds": 4}})
    with pytest.raises(CxrError, match="verdict must be one of"):
        bs.verdict_sentence("A", "B", result | {"verdict": "tie"}, metric="label_f1_micro")


def test_sparse_labels_and_bad_input():
    truth = np.zeros((30, L))
    truth[:12, LABELS.index("Edema")] = 1.0
    truth[:12, LABELS.index("Fracture")] = -1.0
    assert bs.sparse_labels(truth) == [name for name in LABELS if name != "Edema"]
    assert "Fracture" not in bs.sparse_labels(truth, uncertain="positive")
    assert set(COMPETITION5) - set(bs.sparse_labels(truth, min_positives=0)) == set(COMPETITION5)
    records, resampler = bs.SeedRecords(np.zeros((1, 30, L))), bs.Resampler(30, n_boot=10)
    with pytest.raises(CxrError, match="unknown metric 'bleu4'; supported: label_f1_micro, .*f1/Edema"):
        bs.point(truth, records, metric="bleu4")
    with pytest.raises(CxrError, match="needs SeedRecords.loss_sum"):
        bs.point(truth, records, metric="val_loss")
    with pytest.raises(CxrError, match="drawn for 20 images"):
        bs.interval(truth, records, metric="label_f1_micro", resampler=bs.Resampler(20, n_boot=10))
    with pytest.raises(CxrError, match="shape"):
        bs.SeedRecords(np.zeros((30, L)))
    with pytest.raises(CxrError, match="uncertain policy"):
        bs.compare(truth, records, records, metric="label_f1_micro", uncertain="ignore", resampler=resampler)


def test_a_seed_that_generated_nothing_has_an_unparsed_rate_of_zero():
    """A diverged model writes empty reports: no sentence, so nothing unparsed, as the trial itself reports it
    (cxr_core.metrics); its interval and a comparison with it still come out (the loss still needs tokens)."""
    from cxr_core.metrics import report_metrics

    truth = np.zeros((30, L))
    truth[:10, 0] = 1.0
    empty = bs.SeedRecords(np.full((2, 30, L), np.nan), unparsed=np.zeros((2, 30)), sentences=np.zeros((2, 30)))
    talks = bs.SeedRecords(np.zeros((1, 30, L)), unparsed=np.ones((1, 30)), sentences=np.full((1, 30), 4))
    reported = report_metrics([""] * 30, ["No pneumothorax."] * 30)["unparsed_rate"]
    resampler = bs.Resampler(30, n_boot=50)
    iv = bs.interval(truth, empty, metric="unparsed_rate", resampler=resampler)
    assert reported == iv["mean"] == iv["lo"] == iv["hi"] == 0.0
    diff = bs.compare(truth, talks, empty, metric="unparsed_rate", resampler=resampler)
    assert diff["difference"] == pytest.approx(0.25) and diff["verdict"] == "b_better"  # lower is better
    with pytest.raises(CxrError, match="SeedRecords.tokens sums to 0"):
        bs.point(truth, bs.SeedRecords(np.zeros((1, 30, L)), loss_sum=np.ones((1, 30)), tokens=np.zeros((1, 30))),
                 metric="val_loss")  # fmt: skip
