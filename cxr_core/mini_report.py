"""The templated mini report: label vector -> text (byte for byte the seed's) and text -> label vector.

The template (docs/domain.md) writes one sentence per mentioned label, in label order:

    1.0  -> "Evidence of N is present."     (No_Finding: "The chest X-ray appears normal with no acute findings.")
    0.0  -> "No evidence of N."             (No_Finding: "Abnormal findings are present.")
    -1.0 -> "There is suspicion of N."      (No_Finding: "The image quality or findings are uncertain.")

It is invertible, so a generated report parses back into the 14 values; sentences the parser cannot read
are counted, never silently dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cxr_core.labels import LABELS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

NO_FINDING_SENTENCES = {
    POSITIVE: "The chest X-ray appears normal with no acute findings.",
    NEGATIVE: "Abnormal findings are present.",
    UNCERTAIN: "The image quality or findings are uncertain.",
}


def label_phrase(label: str) -> str:
    """'Lung_Opacity' -> 'lung opacity' (the N of the template)."""
    return label.lower().replace("_", " ")


def sentence(label: str, value: float) -> str:
    """The one sentence the template writes for ``label`` at ``value`` (1.0, 0.0 or -1.0)."""
    if label == "No_Finding":
        return NO_FINDING_SENTENCES[value]
    n = label_phrase(label)
    if value == POSITIVE:
        return f"Evidence of {n} is present."
    if value == NEGATIVE:
        return f"No evidence of {n}."
    if value == UNCERTAIN:
        return f"There is suspicion of {n}."
    raise ValueError(f"label value must be 1.0, 0.0 or -1.0, got {value!r} for {label}")


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def mini_report(labels: Mapping[str, float] | Sequence[float]) -> str:
    """Write the mini report of one image.

    Args:
        labels: the 14 values, as a mapping from label name (canonical) or a sequence in label order.
            Blank (None / NaN / "") labels are skipped.

    Returns:
        The sentences of the mentioned labels, in label order, joined by one space.
    """
    values = [labels.get(name) for name in LABELS] if isinstance(labels, Mapping) else list(labels)
    if len(values) != len(LABELS):
        raise ValueError(f"expected {len(LABELS)} label values, got {len(values)}")
    return " ".join(
        sentence(name, float(v)) for name, v in zip(LABELS, values, strict=True) if not _is_blank(v)
    )


# Lower-cased sentence -> (label, value); matching is case- and whitespace-insensitive so that an uncased
# tokenizer's output ("evidence of edema is present .") still parses.
def _key(chunk: str) -> str:
    # WordPiece decoding writes "x - ray" for "X-ray": close the spaces around hyphens, squeeze whitespace.
    return re.sub(r"\s*-\s*", "-", " ".join(chunk.lower().split()))


_SENTENCE_TABLE: dict[str, tuple[str, float]] = {
    _key(sentence(label, value).rstrip(".")): (label, value)
    for label in LABELS
    for value in (POSITIVE, NEGATIVE, UNCERTAIN)
}


@dataclass(frozen=True)
class ParsedReport:
    """A report read back into labels.

    Attributes:
        values: 14 floats in label order; NaN where the report does not mention the label.
        n_sentences: sentences found in the text.
        n_unparsed: sentences that match no template sentence (or repeat a label already stated).
    """

    values: tuple[float, ...]
    n_sentences: int
    n_unparsed: int


def parse_report(text: str) -> ParsedReport:
    """Read a (possibly generated) report back into the 14 label values.

    A sentence that matches no template sentence is counted in ``n_unparsed``. When a label is stated twice,
    the first statement wins and the repeat counts as unparsed (a contradiction is not a reading).
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    values = [math.nan] * len(LABELS)
    index = {label: i for i, label in enumerate(LABELS)}
    n_sentences = n_unparsed = 0
    for chunk in text.split("."):
        key = _key(chunk)
        if not key:
            continue
        n_sentences += 1
        hit = _SENTENCE_TABLE.get(key)
        if hit is None or not math.isnan(values[index[hit[0]]]):
            n_unparsed += 1
            continue
        values[index[hit[0]]] = hit[1]
    return ParsedReport(tuple(values), n_sentences, n_unparsed)


def report_vocabulary() -> list[str]:
    """Every word (lower-cased) and punctuation mark the template can write; a tokenizer must cover these."""
    words: set[str] = set()
    for key in _SENTENCE_TABLE:
        for word in key.split():
            words.update(part for part in word.split("-") if part)
    return sorted(words) + [".", "-"]
