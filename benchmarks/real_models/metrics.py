"""Label-free metrics of a quantized model's outputs against the float model's.

Classifiers (``probs``: softmax of the logits, or the model's own probabilities):

- ``top1``: fraction of held-out inputs whose top-1 class equals the float model's;
- ``dprob``: mean over inputs of the **sum** over classes of ``|p_float - p_quant|`` (twice the
  total-variation distance; independent of the number of classes, lower is better);
- ``kl``: mean over inputs of ``KL(p_float || p_quant)`` in nats.

Encoders (embeddings L2-normalized):

- ``cos``: mean cosine of quantized and float embedding of the same input (higher is better);
- ``spearman``: Spearman rank correlation between the upper triangles of the float and the
  quantized pairwise cosine-similarity matrices;
- ``top1``: nearest-neighbour agreement: fraction of inputs whose nearest other input (by
  cosine) is the same under the quantized and the float embeddings.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier(p_float: np.ndarray, p_quant: np.ndarray) -> dict[str, float]:
    """top1, dprob, kl of two (n, classes) probability arrays."""
    eps = 1e-12
    pf = np.clip(p_float.astype(np.float64), eps, None)
    pq = np.clip(p_quant.astype(np.float64), eps, None)
    pf /= pf.sum(axis=1, keepdims=True)
    pq /= pq.sum(axis=1, keepdims=True)
    return {
        "top1": float(np.mean(pf.argmax(1) == pq.argmax(1))),
        "dprob": float(np.mean(np.abs(pf - pq).sum(1))),
        "kl": float(np.mean((pf * (np.log(pf) - np.log(pq))).sum(1))),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    # average ranks of ties
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged)."""
    ra, rb = _ranks(a), _ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def encoder(e_float: np.ndarray, e_quant: np.ndarray) -> dict[str, float]:
    """cos, spearman, top1 (nearest-neighbour agreement) of two (n, d) embedding arrays."""
    ef = e_float / np.linalg.norm(e_float, axis=1, keepdims=True)
    eq = e_quant / np.linalg.norm(e_quant, axis=1, keepdims=True)
    sf, sq = ef @ ef.T, eq @ eq.T
    iu = np.triu_indices(len(ef), 1)
    np.fill_diagonal(sf, -np.inf)
    np.fill_diagonal(sq, -np.inf)
    return {
        "cos": float(np.mean((ef * eq).sum(1))),
        "spearman": spearman(sf[iu], sq[iu]),
        "top1": float(np.mean(sf.argmax(1) == sq.argmax(1))),
    }


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the attention mask, L2-normalized."""
    m = mask[..., None].astype(np.float64)
    e = (hidden.astype(np.float64) * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return e / np.linalg.norm(e, axis=1, keepdims=True)
