"""Parameter counts on arch:git-base against numbers derived by hand from the layer shapes (DOMAIN.md)."""

import pytest

from cxr_core import methods
from cxr_core.errors import CxrError
from cxr_core.model import load_model, parameter_counts, resolve_targets

H, MLP = 768, 3072  # git-base: ViT-B/16 and BERT-base decoder share these widths


def lora(d_in, d_out, r=8):
    return r * (d_in + d_out)


# One layer of either tower: 4 square attention projections + MLP up + MLP down.
PER_LAYER = 4 * lora(H, H) + lora(H, MLP) + lora(MLP, H)  # 110,592 at r=8
VISION = 12 * PER_LAYER
TEXT = 6 * PER_LAYER
PROJECTION = lora(H, H)


@pytest.fixture(scope="module")
def git_base():
    return load_model("arch:git-base")


def test_git_base_size(git_base):
    assert parameter_counts(git_base) == (176_619_066, 176_619_066)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("vision", VISION), ("text", TEXT), ("all_linear", VISION + TEXT + PROJECTION),
     ("attention", 18 * 4 * lora(H, H)), ("mlp", 18 * (lora(H, MLP) + lora(MLP, H)))],
)  # fmt: skip
def test_lora_trainable_params_exact(preset, expected):
    model = methods.wrap(load_model("arch:git-base"), "lora", {"r": 8, "alpha": 16, "target_modules": preset})
    trainable, total = parameter_counts(model)
    assert trainable == expected
    assert total == 176_619_066 + expected


def test_presets_exclude_lm_head(git_base):
    assert "output" not in resolve_targets(git_base, "all_linear")
    assert len(resolve_targets(git_base, "vision")) == 12 * 6
    assert len(resolve_targets(git_base, "text")) == 6 * 6


def test_unknown_target_module_lists_valid_names(git_base):
    with pytest.raises(CxrError) as err:
        resolve_targets(git_base, ["q_proj", "qkv"])
    msg = str(err.value)
    assert (
        "'qkv' matches no Linear layer" in msg and "self_attn.q_proj" in msg and "attention.self.query" in msg
    )
    with pytest.raises(CxrError, match="unknown target preset 'visual'"):
        resolve_targets(git_base, "visual")
