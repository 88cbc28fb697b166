"""Metrics of generated reports: label precision/recall/F1 (the clinical-efficacy convention) and BLEU.

A label counts as predicted (and as true) positive when the report states it as present (1.0). How an
uncertain statement (-1.0) counts is the ``uncertain`` policy: ``negative`` (default) or ``positive``;
it applies to references and predictions alike and is recorded with the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from cxr_core.errors import CxrError
from cxr_core.labels import COMPETITION5, LABELS
from cxr_core.mini_report import parse_report

UNCERTAIN_POLICIES = ("negative", "positive")


def positives(values: np.ndarray, *, uncertain: str = "negative") -> np.ndarray:
    """(N, 14) label values (1, 0, -1, NaN) -> (N, 14) 0/1 'stated present' matrix under the policy."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise CxrError(f"uncertain policy must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    hit = values == 1.0
    if uncertain == "positive":
        hit |= values == -1.0
    return hit.astype(np.int8)


def label_metrics(true_values: np.ndarray, pred_values: np.ndarray, *, uncertain: str = "negative") -> dict:
    """Micro and macro P/R/F1 over the 14 labels (``label_*``) and the 5 competition labels (``label5_*``).

    Args:
        true_values, pred_values: (N, 14) arrays of 1.0 / 0.0 / -1.0 / NaN in label order.

    Returns:
        Flat metrics plus ``per_label``: {label: {precision, recall, f1, support}}.
    """
    y_true = positives(np.asarray(true_values, dtype=float), uncertain=uncertain)
    y_pred = positives(np.asarray(pred_values, dtype=float), uncertain=uncertain)
    out: dict = {}
    idx5 = [LABELS.index(name) for name in COMPETITION5]
    for prefix, cols in (("label", list(range(len(LABELS)))), ("label5", idx5)):
        for avg in ("micro", "macro"):
            p, r, f, _ = precision_recall_fscore_support(
                y_true[:, cols], y_pred[:, cols], average=avg, zero_division=0
            )
            out[f"{prefix}_precision_{avg}"] = float(p)
            out[f"{prefix}_recall_{avg}"] = float(r)
            out[f"{prefix}_f1_{avg}"] = float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_label"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(LABELS)
    }
    return out


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU-1..4 (sacrebleu, 13a tokenisation, lower-cased), on a 0-1 scale like the seed's."""
    from sacrebleu.metrics import BLEU

    out = {}
    for n in (1, 2, 3, 4):
        bleu = BLEU(max_ngram_order=n, lowercase=True, effective_order=True)
        out[f"bleu{n}"] = bleu.corpus_score(list(hypotheses), [list(references)]).score / 100.0
    return out


def report_metrics(generated: Sequence[str], references: Sequence[str], *, uncertain: str = "negative") -> dict:
    """Every text and label metric of generated reports against reference reports.

    Returns:
        Flat metrics (``label_f1_micro``, ``label5_f1_macro``, ``bleu4``, ``unparsed_rate``,
        ``exact_match``, ...) plus ``per_label``.
    """
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports for {len(references)} references")
    parsed = [parse_report(text) for text in generated]
    truth = np.array([parse_report(text).values for text in references], dtype=float).reshape(-1, len(LABELS))
    pred = np.array([p.values for p in parsed], dtype=float).reshape(-1, len(LABELS))
    out = label_metrics(truth, pred, uncertain=uncertain)
    n_sentences = sum(p.n_sentences for p in parsed)
    out["unparsed_rate"] = sum(p.n_unparsed for p in parsed) / max(n_sentences, 1)
    # Exact match on the label reading (1/0/-1/blank for all 14), robust to spacing and case.
    same = [(np.isnan(t) & np.isnan(q)) | (t == q) for t, q in zip(truth, pred, strict=True)]
    out["exact_match"] = float(np.mean([s.all() for s in same])) if same else 0.0
    out.update(bleu_scores(generated, references))
    out["uncertain_policy"] = uncertain
    return out
