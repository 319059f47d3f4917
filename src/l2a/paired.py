"""paired: compare two `l2a eval` lines item by item, since they scored the same items.

Two methods scored on the same 500 items make correlated errors: most items are right (or wrong) for
both. Their two 95% CIs (about ±4.4 points each at n = 500) say little about the difference, whose
unpaired CI is wider still (about ±6 points). Resampling the items once and scoring both methods on each
resample gives the CI of the difference itself, usually much narrower: that is what decides whether one
method is above another or inside the noise.

A line's metric is `sum(values) / sum(weights)` over its items (`values`: each item's score, weights all 1
for accuracy; each item's summed NLL, weights its scored tokens, for per-token NLL). A point on a curve
between two lines is interpolated item by item (the interpolated mean is the mean of the interpolated
items), so equal-cost comparisons against a curve are paired too (pareto.py). Lines written before
`l2a eval` recorded per-item values have none: their comparisons have no CI.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def values(line: dict, y: str) -> np.ndarray | None:
    """Per-item values (n,) of the metric `y` ("accuracy" or "nll") of a line, None when not recorded."""
    v = line.get("item_nll" if y == "nll" else "item_scores")
    return None if v is None else np.asarray(v, dtype=np.float64)


def weights(line: dict, y: str) -> np.ndarray | None:
    """Per-item weights (n,) of the metric `y`: scored tokens for NLL per token, else ones."""
    if y == "nll":
        w = line.get("item_tokens")
        return None if w is None else np.asarray(w, dtype=np.float64)
    v = line.get("item_scores")
    return None if v is None else np.ones(len(v))


def diff_samples(a: np.ndarray, b: np.ndarray, w: np.ndarray, sign: float = 1.0, n_resamples: int = RESAMPLES,
                 seed: int = 0) -> np.ndarray:
    """Bootstrap samples (R,) of sign * (sum(a)/sum(w) - sum(b)/sum(w)), items resampled jointly. a, b, w:
    (n,) values of two methods on the same items and the items' weights. The same seed and n draw the same
    resamples, so samples of several comparisons on one item set can be averaged (a joint CI)."""
    if not (a.shape == b.shape == w.shape) or a.size == 0:
        raise ValueError(f"paired values need the same items: got {a.shape}, {b.shape}, weights {w.shape}")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_resamples, a.size))  # (R, n)
    return sign * (a - b)[idx].sum(1) / w[idx].sum(1)  # (R,)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    q = (1.0 - level) / 2
    return float(np.quantile(samples, q)), float(np.quantile(samples, 1 - q))


def diff_ci(a: np.ndarray, b: np.ndarray, w: np.ndarray, sign: float = 1.0, level: float = 0.95,
            n_resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of sign * (sum(a)/sum(w) - sum(b)/sum(w)) (`diff_samples`)."""
    return interval(diff_samples(a, b, w, sign, n_resamples, seed), level)


def same_items(lines: list[dict], y: str) -> np.ndarray | None:
    """The shared weights (n,) when every line has per-item values for `y` on the same n items (same
    weights), else None: such lines can be compared item by item."""
    ws = [weights(r, y) for r in lines]
    if not ws or any(w is None for w in ws) or len({w.size for w in ws}) != 1:
        return None
    if any(not np.array_equal(w, ws[0]) for w in ws[1:]):
        return None
    if any(r.get("n") != ws[0].size for r in lines):
        return None
    return ws[0]
