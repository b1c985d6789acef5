"""The latent-noise spec: the one definition of how an integer seed becomes a noise vector.

Both the service and the training package import this module, so a seed gives the same
``z`` everywhere. It depends on numpy alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SEED_MIN = 0
SEED_MAX = 2**63 - 1  # inclusive
DISTRIBUTION = "standard_normal"
DTYPE = "float32"
SPEC = (
    "z = numpy.random.Generator(numpy.random.PCG64(seed))"
    ".standard_normal(latent_size, dtype=numpy.float32)"
)


def check_seed(seed: object) -> int:
    """Return ``seed`` as an int if it is a valid seed, else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise ValueError(f"seed must be in [0, 2**63 - 1], got {seed}")
    return int(seed)


def noise_for_seed(seed: int, latent_size: int) -> np.ndarray:
    """The noise vector of one seed: float32, shape ``[latent_size]``."""
    rng = np.random.Generator(np.random.PCG64(check_seed(seed)))
    return rng.standard_normal(latent_size, dtype=np.float32)


def noise_for_seeds(seeds: Iterable[int], latent_size: int) -> np.ndarray:
    """Noise for each seed, stacked: float32, shape ``[len(seeds), latent_size]``."""
    rows = [noise_for_seed(s, latent_size) for s in seeds]
    if not rows:
        return np.zeros((0, latent_size), dtype=np.float32)
    return np.stack(rows)


def label_for_seed(seed: int, num_classes: int) -> int:
    """The class a conditional model draws for a seed when no label is given.

    ``seed % num_classes``: consecutive seeds cycle through the classes, so any run of
    ``num_classes`` seeds holds each class once, and a seed's image stays a pure function
    of the seed (it does not depend on its neighbours in a request).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return check_seed(seed) % num_classes


def labels_for_seeds(seeds: Iterable[int], num_classes: int) -> np.ndarray:
    """``label_for_seed`` of each seed: int64, shape ``[len(seeds)]``."""
    return np.array([label_for_seed(s, num_classes) for s in seeds], dtype=np.int64)
