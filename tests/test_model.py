"""Parameter counts on arch:git-base against numbers derived by hand from the layer shapes (docs/domain.md): LoRA's
and IA3's presets."""

import re

import pytest

from cxr_core import methods
from cxr_core.errors import CxrError
from cxr_core.model import load_model, model_skeleton, parameter_counts, resolve_targets

H, MLP = 768, 3072  # git-base: ViT-B/16 and BERT-base decoder share these widths


def lora(d_in, d_out, r=8):
    return r * (d_in + d_out)


# One layer of either tower: 4 square attention projections + MLP up + MLP down.
PER_LAYER = 4 * lora(H, H) + lora(H, MLP) + lora(MLP, H)  # 110,592 at r=8
VISION = 12 * PER_LAYER
TEXT = 6 * PER_LAYER
PROJECTION = lora(H, H)
# IA3 rescales, per layer of either tower, the key and the value projection's output (H each) and the feed-forward
# down projection's input (the MLP-wide intermediate activation).
IA3_PER_LAYER = H + H + MLP  # 4,608


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
    skeleton = model_skeleton("arch:git-base")  # meta device: the model's parameters, no weights to draw
    model = methods.wrap(skeleton, "lora", {"r": 8, "alpha": 16, "target_modules": preset})
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


@pytest.mark.parametrize(
    ("targets", "expected", "feedforward"),
    [("vision", 12 * IA3_PER_LAYER, 12), ("text", 6 * IA3_PER_LAYER, 6), ("all", 18 * IA3_PER_LAYER, 18),
     (["key", "value"], 6 * 2 * H, 0), (["mlp.fc2", "attention.self.value"], 12 * MLP + 6 * H, 12)],
)  # fmt: skip
def test_ia3_trainable_params_exact(targets, expected, feedforward):
    model = methods.wrap(load_model("arch:git-base"), "ia3", {"target_modules": targets})
    assert parameter_counts(model) == (expected, 176_619_066 + expected)
    config = model.peft_config["default"]
    ff = set(config.feedforward_modules)
    assert len(ff) == feedforward and ff <= set(config.target_modules)
    # The feed-forward modules are the down projections (scaled on their 3072-wide input), never the attention's
    # output projection; every other target is scaled on its 768-wide output.
    assert all(n.endswith(("mlp.fc2", ".output.dense")) and "attention" not in n for n in ff)
    vectors = {n.removeprefix("base_model.model.").removesuffix(".ia3_l.default"): tuple(p.shape)
               for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    assert set(vectors) == set(config.target_modules)
    assert all(shape == ((1, MLP) if n in ff else (H, 1)) for n, shape in vectors.items())


def test_ia3_presets_name_keys_values_and_feedforward_per_tower(git_base):
    from cxr_core.methods.ia3 import resolve

    short = lambda names: sorted({re.sub(r"\.\d+\.", ".N.", n) for n in names})  # noqa: E731
    vision, vision_ff = resolve(git_base, "vision")
    text, text_ff = resolve(git_base, "text")
    assert short(vision) == [f"git.image_encoder.vision_model.encoder.layers.N.{m}"
                             for m in ("mlp.fc2", "self_attn.k_proj", "self_attn.v_proj")]  # fmt: skip
    assert short(text) == [f"git.encoder.layer.N.{m}" for m in ("attention.self.key", "attention.self.value",
                                                                "output.dense")]  # fmt: skip
    assert short(vision_ff) == ["git.image_encoder.vision_model.encoder.layers.N.mlp.fc2"]
    assert short(text_ff) == ["git.encoder.layer.N.output.dense"]
    assert resolve(git_base, "all") == (vision + text, vision_ff + text_ff)
    with pytest.raises(CxrError, match="unknown target preset 'attention'; use one of vision, text, all"):
        resolve(git_base, "attention")
    with pytest.raises(CxrError, match="'qkv' matches no Linear layer"):
        resolve(git_base, ["qkv"])
