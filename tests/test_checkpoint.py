"""A saved checkpoint reloads into the same predictions: LoRA as a PEFT adapter, FFT as a full model."""

import pytest
import torch

from cxr_core.config import trial_config
from cxr_core.dataset import batches
from cxr_core.trial import MemoryMeter, load_checkpoint_model, save_checkpoint, setup, train_epoch


@pytest.mark.parametrize("method", ["lora", "fft"])
def test_checkpoint_reloads_into_the_same_predictions(method, small_data, tmp_path):
    root, splits = small_data
    cfg = trial_config({
        "method": method, "model": "embedded",
        "data": {"split_dir": str(splits), "image_root": str(root), "max_train": 32, "max_val": 8,
                 "cache_dir": "none"},
        "train": {"epochs": 1, "lr": 5e-3, "num_threads": 1},
        "lora": {"r": 4, "target_modules": "all_linear"},
    })  # fmt: skip
    s = setup(cfg, meter=MemoryMeter(torch.device("cpu")))
    train_epoch(s, 0)  # weights move away from the base model, so a lost adapter would show
    save_checkpoint(s, tmp_path, epoch=1)
    assert (
        tmp_path / "model" / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")
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
