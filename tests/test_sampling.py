"""Repeat-factor sampling of the training images (``train.sampling: repeat_factor``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_core.config import trial_config
from cxr_core.dataset import SplitData, batches, sample_weights
from cxr_core.errors import CxrError

NAN = float("nan")


def test_weights_follow_the_rarest_positive_label():
    # 10 images, 2 labels: A positive in 5 (f = 0.5), B positive in 1 (f = 0.1); B's -1 and NaN are not positive.
    labels = np.array(
        [[1, 0]] * 4 + [[1, 1]] + [[0, -1]] + [[0, NAN]] * 3 + [[NAN, 0]],
        dtype=float,
    )
    w = sample_weights(labels, threshold=0.4)
    # A: max(1, sqrt(0.4 / 0.5)) = 1; B: sqrt(0.4 / 0.1) = 2. The image with both takes B's 2.
    assert w.tolist() == [1.0] * 4 + [2.0] + [1.0] * 5
    # A threshold below every label's frequency leaves uniform weights.
    assert sample_weights(labels, threshold=0.05).tolist() == [1.0] * 10
    # A label positive nowhere raises no error and no weight.
    assert sample_weights(np.zeros((3, 2)), threshold=0.3).tolist() == [1.0] * 3
    assert sample_weights(labels, threshold=1.0)[4] == pytest.approx(math.sqrt(10))


def test_an_epoch_draws_as_many_images_weighted_and_the_same_for_the_same_seed():
    n = 200
    labels = np.zeros((n, 1))
    labels[:20, 0] = 1  # 10% positive
    # Image i's text is [CLS] i+5 [SEP], so a batch says which images it drew.
    data = SplitData(pixel_values=torch.zeros(n, 3, 2, 2), input_ids=[[101, i + 5, 102] for i in range(n)],
                     reports=["r"] * n, labels=labels)  # fmt: skip
    w = sample_weights(labels, threshold=0.9)  # positives weigh 3

    def drawn(seed: int, weights) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [int(i) - 5 for b in batches(data, batch_size=16, pad_id=0, generator=gen, weights=weights)
                for i in b["input_ids"][:, 1]]  # fmt: skip

    epochs = [drawn(seed, w) for seed in range(30)]
    assert all(len(e) == n for e in epochs)  # the epoch's length (its number of steps) does not change
    # The share of positive images drawn: 20 * 3 / (20 * 3 + 180) = 0.25, against 0.10 uniformly.
    share = np.mean([i < 20 for e in epochs for i in e])
    assert share == pytest.approx(0.25, abs=0.02)
    assert len(set(epochs[0])) < n  # with replacement: some images twice, some not at all
    assert sorted(drawn(0, None)) == list(range(n))  # without weights: each image once
    assert drawn(7, w) == drawn(7, w)


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"sampling": "balanced"}, "train.sampling"),
        ({"sampling": "repeat_factor", "repeat_threshold": 0}, "train.repeat_threshold"),
    ],
)
def test_bad_sampling_settings_are_refused(train, key):
    with pytest.raises(CxrError, match=key.replace(".", r"\.")):
        trial_config({"method": "fft", "train": train})
