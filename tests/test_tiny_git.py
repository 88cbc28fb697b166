"""The embedded tiny GIT backbone: loads offline with Auto* classes, is GIT-shaped and tiny, its tokenizer
round-trips every report sentence, its committed weights caption the pretraining task, and a rebuild is
deterministic."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoProcessor, GitForCausalLM, GitProcessor  # noqa: E402

from cxr_core import tiny_git  # noqa: E402
from cxr_core.labels import LABELS  # noqa: E402
from cxr_core.mini_report import mini_report, parse_report, report_vocabulary  # noqa: E402

FOLDER = tiny_git.embedded_model_path()


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One thread: on a busy 2-core machine, two threads make these tiny batches several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def committed():
    model = AutoModelForCausalLM.from_pretrained(FOLDER).eval()
    processor = AutoProcessor.from_pretrained(FOLDER)
    return model, processor


def _round_trip(tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True)


def test_committed_folder_loads_offline_with_auto_classes(committed):
    model, processor = committed
    assert isinstance(model, GitForCausalLM)
    assert isinstance(processor, GitProcessor)
    assert type(processor.tokenizer).__name__ in {"BertTokenizer", "BertTokenizerFast"}
    assert len(processor.tokenizer) == model.config.vocab_size
    crop = processor.image_processor.crop_size
    assert (crop["height"], crop["width"]) == (64, 64)
    assert processor.image_processor.size == {"shortest_edge": 64}
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "pretraining.json"} <= names
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 10_000_000
    record = json.loads((FOLDER / "pretraining.json").read_text())
    assert record["command"].startswith("python -m jobs.build_tiny_git")
    assert record["held_out"]["pretrained"]["loss"] < record["held_out"]["random_init"]["loss"] / 5


def test_config_is_tiny_and_keeps_git_module_names(committed):
    model, processor = committed
    cfg, tok = model.config, processor.tokenizer
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (64, 8)
    assert cfg.hidden_size <= 128 and cfg.vision_config.hidden_size <= 128
    assert cfg.num_hidden_layers <= 4 and cfg.vision_config.num_hidden_layers <= 4
    assert cfg.max_position_embeddings >= 192
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, tok.cls_token_id, tok.sep_token_id)
    assert tok.convert_ids_to_tokens(0) == "[PAD]"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    vision = "git.image_encoder.vision_model.encoder.layers.{}.{}"
    text = "git.encoder.layer.{}.{}"
    for i in range(cfg.vision_config.num_hidden_layers):
        for leaf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"):
            assert vision.format(i, leaf) in linear
        assert {vision.format(i, "mlp.fc1"), vision.format(i, "mlp.fc2")} <= linear
    for i in range(cfg.num_hidden_layers):
        for leaf in ("attention.self.query", "attention.self.key", "attention.self.value"):
            assert text.format(i, leaf) in linear
        for leaf in ("attention.output.dense", "intermediate.dense", "output.dense"):
            assert text.format(i, leaf) in linear
    assert {"git.visual_projection.visual_projection.0", "output"} <= linear


def test_builders_match_the_committed_tokenizer_and_config(committed):
    model, processor = committed
    tok = tiny_git.build_tokenizer()
    assert tok.get_vocab() == processor.tokenizer.get_vocab()
    fresh = tiny_git.tiny_git_config(tok)
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "max_position_embeddings",
    ):
        assert getattr(fresh, key) == getattr(model.config, key), key
    ignore = {"dtype", "transformers_version"}
    fresh_vision = {k: v for k, v in fresh.vision_config.to_dict().items() if k not in ignore}
    assert fresh_vision == {k: v for k, v in model.config.vision_config.to_dict().items() if k not in ignore}


@pytest.mark.parametrize("value", [1.0, 0.0, -1.0])
def test_every_template_sentence_round_trips_through_the_tokenizer(committed, value):
    tok = committed[1].tokenizer
    for i in range(len(LABELS)):
        labels = [None] * len(LABELS)
        labels[i] = value
        report = mini_report(labels)
        ids = tok(report).input_ids
        assert tok.unk_token_id not in ids, report
        assert (ids[0], ids[-1]) == (tok.cls_token_id, tok.sep_token_id)
        parsed = parse_report(_round_trip(tok, report))
        assert parsed.values[i] == value and parsed.n_unparsed == 0, report


def test_full_reports_round_trip_and_fit_the_positions(committed):
    model, processor = committed
    tok = processor.tokenizer
    rng = np.random.default_rng(0)
    reports = [mini_report([1.0] * len(LABELS)), mini_report([-1.0] * len(LABELS))]
    for _ in range(20):
        values = rng.choice([1.0, 0.0, -1.0, np.nan], size=len(LABELS))
        reports.append(mini_report([None if np.isnan(v) else float(v) for v in values]))
    for report in reports:
        ids = tok(report).input_ids
        assert len(ids) <= model.config.max_position_embeddings
        expected = parse_report(report).values
        assert np.array_equal(parse_report(_round_trip(tok, report)).values, expected, equal_nan=True)


def test_vocabulary_covers_reports_and_captions_and_spells_unseen_words(committed):
    tok = committed[1].tokenizer
    vocab = tok.get_vocab()
    for word in report_vocabulary() + tiny_git.caption_vocabulary():
        assert word in vocab, word
    pieces = tok.tokenize("Pneumomediastinum 42")
    assert "[UNK]" not in pieces and pieces[0] == "p" and pieces[1].startswith("##")
    assert _round_trip(tok, "Pneumomediastinum 42") == "pneumomediastinum 42"


def test_captions_are_not_report_sentences():
    rng = np.random.default_rng(3)
    for _ in range(50):
        caption = tiny_git.scene_caption(tiny_git.sample_scene(rng))
        assert parse_report(caption).n_unparsed == parse_report(caption).n_sentences


def test_committed_weights_caption_fresh_images_far_better_than_random_init(committed):
    model, processor = committed
    rng = np.random.default_rng(12345)  # neither the training (seed, 0) nor the held-out (seed, 1) stream
    batch = [tiny_git.synthetic_batch(processor, 48, rng)]
    torch.manual_seed(0)
    random_model = GitForCausalLM(model.config).eval()
    trained = tiny_git.caption_metrics(model, processor, batch)
    untrained = tiny_git.caption_metrics(random_model, processor, batch, generate=False)
    assert trained["loss"] < 0.1 < 4.0 < untrained["loss"]
    assert trained["token_accuracy"] > 0.95 > 0.05 > untrained["token_accuracy"]
    assert trained["exact_match"] >= 0.5  # whole captions, greedy, from the image alone


def test_pretrain_smoke_writes_a_loadable_folder_and_is_deterministic(tmp_path):
    kwargs = {"steps": 5, "seed": 0, "batch_size": 4, "eval_size": 4, "threads": 1}
    first = tiny_git.pretrain(tmp_path / "a", **kwargs)
    second = tiny_git.pretrain(tmp_path / "b", **kwargs)
    wa, wb = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert first["train_loss_curve"] == second["train_loss_curve"]
    other_seed = tiny_git.new_tiny_git(tiny_git.build_tokenizer(), seed=1).state_dict()
    start = tiny_git.new_tiny_git(tiny_git.build_tokenizer(), seed=0).state_dict()
    assert not torch.equal(other_seed["output.weight"], start["output.weight"])
    assert not torch.equal(wa["output.weight"], start["output.weight"])  # it trained
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    processor = AutoProcessor.from_pretrained(tmp_path / "a")
    assert isinstance(model, GitForCausalLM) and len(processor.tokenizer) == model.config.vocab_size
    record = json.loads((tmp_path / "a" / "pretraining.json").read_text())
    assert record == first
    assert (record["steps"], record["seed"], len(record["train_loss_curve"])) == (5, 0, 5)
    assert record["held_out"]["pretrained"]["loss"] < record["held_out"]["random_init"]["loss"]


def test_train_throughput_measures_a_full_fine_tuning_step():
    rate = tiny_git.train_throughput(batch_size=2, text_tokens=12, steps=2)
    assert 0 < rate < 10_000
