"""A saved checkpoint reloads into the same predictions: LoRA and IA3 as PEFT adapters, FFT as a full model."""

import pytest
import torch

from cxr_core.config import trial_config
from cxr_core.dataset import batches
from cxr_core.trial import MemoryMeter, load_checkpoint_model, save_checkpoint, setup, train_epoch


@pytest.mark.parametrize("method", ["lora", "fft", "ia3"])
def test_checkpoint_reloads_into_the_same_predictions(method, small_data, tmp_path):
    root, splits = small_data
    cfg = trial_config({
        "method": method, "model": "embedded",
        "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 32, "max_val": 8,
                 "cache_dir": "none"},
        "train": {"epochs": 1, "lr": 5e-3, "num_threads": 1},
        "lora": {"r": 4, "target_modules": "all_linear"}, "ia3": {"target_modules": "all"},
    })  # fmt: skip
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    train_epoch(s, 0)  # weights move away from the base model, so a lost adapter would show
    save_checkpoint(s, tmp_path, epoch=1)
    assert (
        tmp_path / "model" / ("model.safetensors" if method == "fft" else "adapter_model.safetensors")
    ).is_file()
    reloaded = load_checkpoint_model(cfg, tmp_path)
    batch = next(batches(s.val, batch_size=8, pad_id=s.pad_id))
    s.model.eval()
    reloaded.eval()
    with torch.no_grad():
        a = s.model(**batch).logits
        b = reloaded(**batch).logits
        gen_a = s.model.generate(pixel_values=batch["pixel_values"], max_new_tokens=20)
        gen_b = reloaded.generate(pixel_values=batch["pixel_values"], max_new_tokens=20)
    torch.testing.assert_close(a, b)
    assert torch.equal(gen_a, gen_b)
    # and the trained weights differ from the untouched base model's
    from cxr_core.model import load_model

    with torch.no_grad():
        c = load_model("embedded").eval()(**batch).logits
    assert not torch.allclose(a, c)


def _checkpoint(folder, method: str, settings: dict):
    """A checkpoint folder as a trial writes it (``model/`` and ``trial_state.json``) of a freshly wrapped model."""
    import json

    from cxr_core import methods
    from cxr_core.model import load_model

    methods.wrap(load_model("embedded"), method, settings).save_pretrained(folder / "model")
    (folder / "trial_state.json").write_text(json.dumps({"epoch": 1}))
    return folder


def test_a_checkpoint_reloads_only_through_its_own_methods_path(tmp_path):
    """The registry decides the path from the trial's method, and refuses a checkpoint of the other kind: an adapter
    is never loaded as a full model, a full model never as an adapter, on evaluation and on resume alike."""
    from cxr_core import methods
    from cxr_core.errors import CxrError
    from cxr_core.model import load_model
    from cxr_core.trial import _load_checkpoint

    adapter = _checkpoint(tmp_path / "a", "lora", {"r": 4, "target_modules": "text"})
    full = _checkpoint(tmp_path / "f", "fft", {})
    fft_cfg = trial_config({"method": "fft"})
    lora_cfg = trial_config({"method": "lora", "lora": {"r": 4, "target_modules": "text"}})
    with pytest.raises(
        CxrError, match=r"holds a PEFT adapter, but method fft saves a full model \(config.json\)"
    ):
        load_checkpoint_model(fft_cfg, adapter)
    with pytest.raises(CxrError, match=r"holds no PEFT adapter, but method lora saves a PEFT adapter"):
        load_checkpoint_model(lora_cfg, full)
    with pytest.raises(CxrError, match="holds a PEFT adapter, but method fft"):
        _load_checkpoint(fft_cfg, load_model("embedded"), adapter)
    # The right kind with the wrong modules (a text adapter resumed as a vision one) is named, not half-loaded.
    vision = trial_config({"method": "lora", "lora": {"r": 4, "target_modules": "vision"}})
    model = methods.wrap(load_model("embedded"), "lora", {"r": 4, "target_modules": "vision"})
    with pytest.raises(CxrError, match=r"does not fit a LoRA model \(\d+ unexpected"):
        _load_checkpoint(vision, model, adapter)
    assert _load_checkpoint(lora_cfg, methods.wrap(load_model("embedded"), "lora", {"r": 4, "target_modules": "text"}),
                            adapter) == 1  # fmt: skip
    assert _load_checkpoint(fft_cfg, load_model("embedded"), full) == 1
