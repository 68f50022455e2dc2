"""Keyed random streams: the randomness of a fit, addressed by what it is for.

A fit has one root :class:`numpy.random.SeedSequence` (from its seed, see
:meth:`dream_sc.engine.config.FitConfig.streams`). Every random quantity (the cells of a step,
a feature's noise, a feature's posterior draws, a permutation) takes the generator of its own
key instead of the next numbers of a shared generator, so results do not depend on chunking,
feature order or which worker computes them.
"""

from __future__ import annotations

import numpy as np


def keyed_rng(root: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """The generator of the sub-stream ``key`` of a run's root sequence ``root``.

    Streams are addressed by a key (step, feature, purpose tag) instead of being drawn one
    after another, so a feature's or a step's draws do not depend on which chunk, order or
    worker asks for them. The stream is ``PCG64([*root.entropy, *key])``.

    Examples
    --------
    >>> root = np.random.SeedSequence(3)
    >>> int(keyed_rng(root, 7, 1).integers(100)) == int(keyed_rng(root, 7, 1).integers(100))
    True
    """
    entropy = np.atleast_1d(root.entropy).tolist()
    return np.random.Generator(np.random.PCG64([*map(int, entropy), *map(int, key)]))
