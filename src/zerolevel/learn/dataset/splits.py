"""Which split (train / val / test) each object of a dataset goes to: drawn per category from a
seed, by object, so no object's views are in two splits."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ...errors import InputError
from .folder import SPLITS
from .sources import ObjectSource

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def split_counts(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """How many of n objects go to train, val and test.

    val and test get round(n * fraction); when n >= 3 every split with a positive fraction gets at
    least one object (taken from the largest); train gets the rest.
    """
    f_train, f_val, f_test = fractions
    counts = [0, int(round(n * f_val)), int(round(n * f_test))]
    counts[0] = n - counts[1] - counts[2]
    if n >= 3:
        for k, f in enumerate(fractions):
            if f > 0 and counts[k] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[k] = 1
    return counts[0], counts[1], counts[2]


def split_objects(sources: Sequence[ObjectSource], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, list[ObjectSource]]:
    """Train / val / test by object, drawn per category from `seed`; each split keeps the input order."""
    fractions = check_fractions(fractions)
    split_of = {}
    categories = list(dict.fromkeys(s.category for s in sources))
    for category in categories:
        members = [i for i, s in enumerate(sources) if s.category == category]
        order = np.random.default_rng([int(seed), zlib.crc32(category.encode())]).permutation(len(members))
        n_train, n_val, _ = split_counts(len(members), fractions)
        for rank, j in enumerate(order):
            split_of[members[j]] = 0 if rank < n_train else 1 if rank < n_train + n_val else 2
    return {name: [s for i, s in enumerate(sources) if split_of[i] == k] for k, name in enumerate(SPLITS)}


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) fractions: three non-negative numbers summing to 1 (InputError otherwise)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise InputError(f"splits must be three fractions train,val,test >= 0 summing to 1 with train > 0, "
                         f"got {','.join(map(str, fractions))}")
    return values  # type: ignore[return-value]
