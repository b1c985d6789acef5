"""The latent-noise spec: one seed, one z, in every call and every process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve import latent
from serve.latent import noise_for_seed, noise_for_seeds


def test_matches_the_documented_formula():
    expected = np.random.Generator(np.random.PCG64(42)).standard_normal(100, dtype=np.float32)
    np.testing.assert_array_equal(noise_for_seed(42, 100), expected)


def test_a_seed_does_not_depend_on_its_neighbours():
    alone = noise_for_seeds([5], 64)[0]
    among = noise_for_seeds([9, 5, 2**63 - 1], 64)[1]
    assert np.array_equal(alone, among)
    assert not np.array_equal(noise_for_seed(5, 64), noise_for_seed(6, 64))


def test_same_in_another_process():
    code = (
        "import sys; from serve.latent import noise_for_seed; "
        "sys.stdout.buffer.write(noise_for_seed(7, 100).tobytes())"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, check=True).stdout
    assert out == noise_for_seed(7, 100).tobytes()


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True, None])
def test_bad_seeds_are_refused(bad):
    with pytest.raises(ValueError, match="seed"):
        noise_for_seed(bad, 10)


def test_label_for_seed_cycles_through_the_classes() -> None:
    assert [latent.label_for_seed(s, 10) for s in range(12)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert latent.label_for_seed(2**63 - 1, 10) == 7
    assert latent.labels_for_seeds([5, 13], 4).tolist() == [1, 1]
    assert latent.labels_for_seeds([5, 13], 4).dtype == np.int64
    with pytest.raises(ValueError, match="num_classes"):
        latent.label_for_seed(1, 0)
    with pytest.raises(ValueError, match="seed"):
        latent.label_for_seed(-1, 10)


def test_broadcast_labels_gives_one_label_to_all_or_keeps_one_per_image() -> None:
    assert latent.broadcast_labels(2, 3) == [2, 2, 2]
    assert latent.broadcast_labels([0, 1, 2], 3) == [0, 1, 2]
    assert latent.broadcast_labels([1], 3) is None  # a list is one per image
    assert latent.broadcast_labels([0, 1], 3) is None
    assert latent.broadcast_labels(1, 0) == []
