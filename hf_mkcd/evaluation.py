"""``compute_metrics`` for Trainer: top-1 / top-5 through the ``evaluate`` module shipped in the package."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

METRIC_PATH = os.path.join(os.path.dirname(__file__), "metrics", "topk_accuracy")


@lru_cache(maxsize=1)
def topk_metric():
    import evaluate  # slow to import (~5 s): only when evaluation actually runs

    return evaluate.load(METRIC_PATH)


def compute_metrics(eval_pred) -> dict:
    """``top1``, ``top5`` and ``accuracy`` (= top1; the name the Hub's model-index knows)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = np.asarray(eval_pred.label_ids)
    out = topk_metric().compute(predictions=np.asarray(logits), references=labels, k=(1, 5))
    out["accuracy"] = out["top1"]
    return out
