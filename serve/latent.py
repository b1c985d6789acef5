"""The latent-noise spec: the one definition of how an integer seed becomes a noise vector,
and of the path between two noise vectors (``slerp`` and ``lerp``, in float32).

Both the service and the training package import this module, so a seed gives the same
``z`` everywhere. It depends on numpy alone.
"""

from __future__ import annotations

import math
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


def broadcast_labels(labels: int | list[int], n: int) -> list[int] | None:
    """The labels of ``n`` images: one int for all of them, or a list of one per image.

    None when a list has another length (each caller words its own refusal); the values are
    not range-checked here.
    """
    values = [labels] * n if isinstance(labels, int) else labels
    return values if len(values) == n else None


# --- Interpolation between two noise vectors -------------------------------------------------

INTERPOLATION_METHODS = ("slerp", "lerp")
# Below this sin(omega) the two vectors are (nearly) parallel or opposite, where slerp's
# division is undefined or its path arbitrary: slerp is then lerp.
SLERP_MIN_SIN = 1e-6


def interpolation_times(steps: int) -> list[float]:
    """``t_i = i / (steps - 1)`` for ``i = 0 .. steps - 1``, in float64: 0.0 first, 1.0 last."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    return [i / (steps - 1) for i in range(steps)]


def _norm(z: np.ndarray) -> float:
    """The Euclidean norm of a float32 vector: exact squares in float64, a correctly rounded sum."""
    wide = z.astype(np.float64)
    return math.sqrt(math.fsum((wide * wide).tolist()))


def interpolation_weights(
    z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "slerp"
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 weights ``(a, b)``, shape ``[steps]``, of frame ``i = a[i] * z0 + b[i] * z1``.

    Every weight is computed in float64 (IEEE 754 double, the C library's ``acos`` and ``sin``
    through Python's math module) and rounded to float32 once:

    - lerp: ``a_i = 1 - t_i``, ``b_i = t_i``;
    - slerp: with ``cos_omega = dot(z0, z1) / (|z0| * |z1|)`` clipped to ``[-1, 1]`` (the dot
      product and the squared norms are sums of exact float64 products, correctly rounded by
      ``math.fsum``), ``omega = acos(cos_omega)`` and ``s = sin(omega)``:
      ``a_i = sin((1 - t_i) * omega) / s``, ``b_i = sin(t_i * omega) / s``. When either vector
      is zero or ``s < SLERP_MIN_SIN`` (parallel or opposite vectors), the lerp weights.
    """
    if method not in INTERPOLATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(INTERPOLATION_METHODS)}, got {method!r}")
    times = interpolation_times(steps)
    pairs = [(1.0 - t, t) for t in times]
    if method == "slerp":
        n0, n1 = _norm(z0), _norm(z1)
        if n0 > 0.0 and n1 > 0.0:
            dot = math.fsum((z0.astype(np.float64) * z1.astype(np.float64)).tolist())
            omega = math.acos(min(1.0, max(-1.0, dot / (n0 * n1))))
            s = math.sin(omega)
            if s >= SLERP_MIN_SIN:
                pairs = [(math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s) for t in times]
    a = np.array([p[0] for p in pairs], dtype=np.float32)
    b = np.array([p[1] for p in pairs], dtype=np.float32)
    return a, b


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """``steps`` noise vectors from ``z0`` to ``z1`` (float32 [d] each): float32 ``[steps, d]``.

    Frame ``i`` is ``a_i * z0 + b_i * z1`` in float32 arithmetic (each product rounded to
    float32, then their sum), with the weights of :func:`interpolation_weights`. The first
    frame is ``z0`` and the last ``z1``, bit for bit (the weights there are exactly 1 and 0).
    """
    z0 = np.asarray(z0, dtype=np.float32)
    z1 = np.asarray(z1, dtype=np.float32)
    if z0.ndim != 1 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must be vectors of one length, got {z0.shape} and {z1.shape}")
    a, b = interpolation_weights(z0, z1, steps, method)
    with np.errstate(over="ignore", invalid="ignore"):  # extreme client noise may overflow
        frames = a[:, None] * z0[None, :] + b[:, None] * z1[None, :]
    # The weights give the ends exactly; setting them also keeps the sign of a zero element.
    frames[0] = z0
    frames[-1] = z1
    return frames
