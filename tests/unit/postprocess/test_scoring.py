"""The top classes: the k best by softmax probability, highest first, ties to the lower class id,
exactly as a full stable sort ranks them (top_k sorts only the few at the top)."""

from __future__ import annotations

import numpy as np
import pytest

from postprocess.scoring import TOP_K, top_k

LABELS = [f"class {i}" for i in range(1000)]


def full_sort(logits: np.ndarray, k: int) -> list[int]:
    probs = np.exp(logits.astype(np.float64) - logits.max())
    return np.argsort(-(probs / probs.sum()), kind="stable")[:k].tolist()


def tied_at_the_cut() -> np.ndarray:
    """Logits whose 5th and 6th best are equal (classes 41 and 42; 999 ties them too)."""
    logits = np.zeros(1000, np.float32)
    logits[[900, 3, 500, 7, 42, 41, 999]] = [5, 4, 4, 3, 2, 2, 2]
    return logits


def rows() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    found = [rng.standard_normal(1000).astype(np.float32) for _ in range(50)]
    found += [rng.integers(0, 3, 1000).astype(np.float32) for _ in range(20)]  # many ties at the top
    found += [np.zeros(1000, np.float32), np.arange(1000, dtype=np.float32)[::-1].copy()]
    found.append(tied_at_the_cut())
    with_nan = rng.standard_normal(1000).astype(np.float32)
    with_nan[[10, 20]] = np.nan  # no ranking survives a NaN softmax; the order must still be the full sort's
    found.append(with_nan)
    return found


@pytest.mark.parametrize("k", [1, TOP_K, 999, 1000, 1001])
def test_the_best_classes_are_ranked_as_a_full_stable_sort_ranks_them(k: int) -> None:
    for logits in rows():
        ranked = top_k(logits, LABELS, k)
        assert [s.class_id for s in ranked] == full_sort(logits, k)
        assert [s.label for s in ranked] == [LABELS[s.class_id] for s in ranked]


def test_scores_are_softmax_probabilities_highest_first() -> None:
    logits = np.array([1.0, 3.0, 2.0, 0.5, -1.0, 2.5], np.float32)
    ranked = top_k(logits, LABELS[:6], 3)
    softmax = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    assert [s.class_id for s in ranked] == [1, 5, 2]
    assert [s.score for s in ranked] == pytest.approx(softmax[[1, 5, 2]].tolist(), rel=1e-12)


def test_the_tie_at_the_cut_goes_to_the_lower_class_id() -> None:
    assert [s.class_id for s in top_k(tied_at_the_cut(), LABELS)] == [900, 3, 500, 7, 41]
