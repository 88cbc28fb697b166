"""Property-based tests of the two parsers that read user input: the report parser and the search-space loader.

- The report parser never raises, whatever it is given, and template -> parse -> template is the identity on
  every label vector (blank, 1, 0, -1 for each of the 14 labels), also after an uncased tokenizer's decoding.
- The search-space loader raises nothing but :class:`CxrError`, with a one-line message, on any document:
  random text and bytes, random YAML values, and a valid space with one part replaced by anything; code keys
  (``eval``, ``sample_from``, ...) are refused wherever they appear.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.mini_report import mini_report, parse_report, sentence
from cxr_core.space import CODE_KEYS, load_study

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------- the report

VALUES = st.sampled_from([1.0, 0.0, -1.0, None, math.nan])
VECTORS = st.lists(VALUES, min_size=len(LABELS), max_size=len(LABELS))
SENTENCES = [sentence(label, v) for label in LABELS for v in (1.0, 0.0, -1.0)]


def _same(a: float, b) -> bool:
    blank = b is None or (isinstance(b, float) and math.isnan(b))
    return math.isnan(a) if blank else a == b


@FUZZ
@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.floats(), st.lists(st.text())))
def test_parser_never_raises_and_counts_every_sentence(text):
    parsed = parse_report(text)
    assert len(parsed.values) == len(LABELS)
    assert all(math.isnan(v) or v in (1.0, 0.0, -1.0) for v in parsed.values)
    mentioned = sum(not math.isnan(v) for v in parsed.values)
    assert 0 <= parsed.n_unparsed <= parsed.n_sentences and mentioned == parsed.n_sentences - parsed.n_unparsed


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(SENTENCES), st.text(max_size=40)), max_size=20))
def test_parser_on_template_sentences_mixed_with_noise(chunks):
    parsed = parse_report(" ".join(chunks))
    mentioned = sum(not math.isnan(v) for v in parsed.values)
    assert mentioned == parsed.n_sentences - parsed.n_unparsed
    assert mentioned <= len({s for s in chunks if s in SENTENCES})


@FUZZ
@given(VECTORS)
def test_template_parse_template_is_the_identity(vector):
    report = mini_report(vector)
    parsed = parse_report(report)
    assert parsed.n_unparsed == 0 and parsed.n_sentences == sum(not _same(math.nan, v) for v in vector)
    assert all(_same(a, b) for a, b in zip(parsed.values, vector, strict=True))
    assert mini_report(list(parsed.values)) == report
    # the same through a mapping, and after an uncased WordPiece decoding ("evidence of x - ray is present .")
    assert mini_report(dict(zip(LABELS, parsed.values, strict=True))) == report
    decoded = report.lower().replace(".", " .").replace("-", " - ")
    assert parse_report(decoded).values == parsed.values or all(
        _same(a, b) for a, b in zip(parse_report(decoded).values, vector, strict=True)
    )


@FUZZ
@given(VECTORS, st.randoms(use_true_random=False))
def test_sentence_order_does_not_change_the_reading(vector, rng):
    sentences = [s for s in mini_report(vector).split(". ") if s]
    rng.shuffle(sentences)
    shuffled = parse_report(". ".join(s.rstrip(".") for s in sentences) + ".")
    assert all(_same(a, b) for a, b in zip(shuffled.values, vector, strict=True))


# -------------------------------------------------------------------------------------- the search space

KEYS = st.one_of(
    st.sampled_from(["name", "arms", "defaults", "method", "model", "train", "lr", "lora", "r", "data", "split_dir",
                     "target_modules", "grid_search", "choice", "uniform", "loguniform", "randint", "scheduler",
                     "type", "search", "seed", "stop", "num_samples", "resources", "gpu", "cpu", "mode", "metric"]),
    st.text(max_size=8),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["fft", "lora", "embedded", "all_linear", "vision", "asha", "optuna", "~nobody/x", "..", ""]
    ),
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=25,
)

VALID = {
    "name": "fuzz",
    "metric": "label_f1_micro",
    "mode": "max",
    "scheduler": {"type": "asha", "grace_period": 1},
    "search": {"algorithm": "variants", "seed": 0},
    "stop": {"training_iteration": 3},
    "max_failures": 1,
    "defaults": {
        "model": "embedded",
        "data": {"split_dir": "data/demo", "image_root": "data/synthetic", "max_train": 8},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1.0e-4, "seed": {"grid_search": [0, 1]}},
        "evaluation": {"max_new_tokens": 16, "uncertain": "negative"},
        "resources": {"cpu": 1, "gpu": 0},
    },
    "arms": [
        {
            "name": "fft",
            "method": "fft",
            "fft": {"freeze": "none"},
            "train": {"lr": {"loguniform": [1e-5, 1e-3]}},
        },
        {
            "name": "lora",
            "method": "lora",
            "num_samples": 2,
            "lora": {
                "r": {"grid_search": [4, 8]},
                "alpha": None,
                "target_modules": {"choice": ["vision", "text"]},
            },
        },
    ],
}


def _paths(node, prefix=()):
    """Every path (tuple of keys / list indices) into ``node``, the root included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


PATHS = list(_paths(VALID))


def _replace(doc, path, value):
    import copy

    doc = copy.deepcopy(doc)
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _load(text: str | bytes):
    """Write ``text`` to a file and load it; only CxrError may escape, with a one-line message."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            return load_study(path, check_paths=False)
        except CxrError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, message
            return exc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@FUZZ
@given(st.text(max_size=400))
def test_loader_on_any_text(text):
    _load(text)


@FUZZ
@given(st.binary(max_size=400))
def test_loader_on_any_bytes(data):
    _load(data)


@FUZZ
@given(YAML_VALUES)
def test_loader_on_any_yaml_document(doc):
    _load(_dump(doc))


@FUZZ
@given(st.sampled_from(PATHS), YAML_VALUES)
def test_loader_on_a_valid_space_with_one_part_replaced(path, value):
    _load(_dump(_replace(VALID, path, value)))


@FUZZ
@given(st.sampled_from(PATHS), KEYS, YAML_VALUES)
def test_loader_on_a_valid_space_with_a_key_added(path, key, value):
    target = VALID
    for k in path:
        target = target[k]
    assume(isinstance(target, dict))
    _load(_dump(_replace(VALID, path, {**target, key: value})))


CODE_PATHS = [p for p in PATHS if p[:1] in (("defaults",), ("arms",)) and len(p) > 2 and p[-1] not in ("name",
              "num_samples")]  # fmt: skip


@FUZZ
@given(
    st.sampled_from(CODE_PATHS), st.sampled_from([k for k in CODE_KEYS if not k.startswith("!")]), YAML_VALUES
)
def test_code_keys_are_refused_wherever_a_value_goes(path, code_key, value):
    result = _load(_dump(_replace(VALID, path, {code_key: value})))
    assert isinstance(result, CxrError) and "code is never evaluated" in str(result), (path, result)


@pytest.mark.parametrize(
    "text",
    [
        "name: !!python/object/apply:os.system ['echo PWNED']\narms: []\n",
        "arms: !!python/name:os.system\n",
        "defaults: !!python/object/new:subprocess.Popen [['echo', 'PWNED']]\n",
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "[" * 5000 + "]" * 5000,
    ],
    ids=["python_object", "python_name", "python_new", "alias_bomb", "deep_nesting"],
)
def test_loader_refuses_code_tags_and_bombs(text):
    result = _load(text)
    assert isinstance(result, CxrError), result


def test_the_valid_space_loads():
    """The fuzzed documents start from a sound space (so replacements reach deep into validation)."""
    study = _load(_dump(VALID))
    assert not isinstance(study, CxrError), study
    assert [a.name for a in study.arms] == ["fft", "lora"]
