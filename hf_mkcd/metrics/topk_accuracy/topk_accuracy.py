"""Top-k accuracy as an ``evaluate`` metric that loads offline from this package
(``evaluate.load("accuracy")`` needs the Hub)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy: the fraction of samples whose label is among the k highest-scoring classes."
_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, C) scores or logits.
    references: (N,) integer labels.
    k: an int or a list of ints (default (1, 5)); k larger than C counts every sample as correct.
Returns:
    {"top1": float, "top5": float, ...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        scores = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references)
        ks = [k] if isinstance(k, int) else list(k)
        order = np.argsort(-scores, axis=1, kind="stable")
        return {f"top{j}": float((order[:, :j] == labels[:, None]).any(1).mean()) for j in ks}
