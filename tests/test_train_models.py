"""The networks' shapes for every supported size, depth and conditioning."""

import pytest
import torch

from train.models import Discriminator, Generator, ModelSpec, check_spec


@pytest.mark.parametrize("size", [8, 12, 28, 32])
@pytest.mark.parametrize("d_depth", [2, 3])
@pytest.mark.parametrize(("classes", "spectral_norm"), [(0, False), (10, True)])
def test_dcgan_shapes(size, d_depth, classes, spectral_norm):
    spec = ModelSpec(image_size=size, width=8, num_classes=classes, spectral_norm=spectral_norm,
                     d_depth=d_depth)
    check_spec(spec)
    labels = torch.arange(5) % 10 if classes else None
    images = Generator(spec)(torch.randn(5, spec.latent_size), labels)
    assert images.shape == (5, 1, size, size)
    D = Discriminator(spec)
    assert D(images, labels).shape == (5,)
    # The third stage halves the side again (rounding up) and doubles the maps.
    side = size // 4 if d_depth == 2 else (size // 4 + 1) // 2
    maps = 8 * 2 ** (d_depth - 1)
    assert D.features(images).shape == (5, maps * side * side)


def test_deeper_discriminator_has_the_reference_layout_at_28():
    D = Discriminator(ModelSpec(d_depth=3, spectral_norm=False))
    convs = [m for m in D.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 64, 4), (64, 128, 4), (128, 256, 3)]
    assert D.head.in_features == 256 * 4 * 4


@pytest.mark.parametrize("depth", [1, 4])
def test_unsupported_depth_is_refused(depth):
    with pytest.raises(ValueError, match="depth must be 2 or 3"):
        check_spec(ModelSpec(d_depth=depth))
