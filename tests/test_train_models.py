"""The networks' shapes for every supported size, depth and conditioning."""

import pytest
import torch

from train.models import Discriminator, Generator, ModelSpec, check_spec


@pytest.mark.parametrize("size", [8, 12, 28, 32])
@pytest.mark.parametrize("d_depth", [2, 3])
@pytest.mark.parametrize(("classes", "spectral_norm", "projection"),
                         [(0, False, "flat"), (10, True, "flat"), (10, False, "pooled")])
def test_dcgan_shapes(size, d_depth, classes, spectral_norm, projection):
    spec = ModelSpec(image_size=size, width=8, num_classes=classes, spectral_norm=spectral_norm,
                     d_depth=d_depth, d_projection=projection)
    check_spec(spec)
    labels = torch.arange(5) % 10 if classes else None
    images = Generator(spec)(torch.randn(5, spec.latent_size), labels)
    assert images.shape == (5, 1, size, size)
    D = Discriminator(spec)
    assert D(images, labels).shape == (5,)
    # The third stage halves the side again (rounding up) and doubles the maps.
    side = size // 4 if d_depth == 2 else (size // 4 + 1) // 2
    maps = 8 * 2 ** (d_depth - 1)
    assert D.features(images).shape == (5, maps, side, side)


@pytest.mark.parametrize("projection", ["flat", "pooled"])
def test_class_term_is_the_projection_of_the_features(projection):
    torch.manual_seed(0)
    D = Discriminator(ModelSpec(num_classes=3, width=8, d_projection=projection)).eval()
    x = torch.rand(4, 1, 28, 28)
    maps = D.features(x)
    phi = maps.sum(dim=(2, 3)) if projection == "pooled" else maps.flatten(1)
    assert D.project.weight.shape == (3, phi.shape[1])
    # Two labels differ by exactly <e_a - e_b, phi(x)>, the unconditional head cancels.
    e = D.project.weight
    diff = D(x, torch.zeros(4, dtype=torch.long)) - D(x, torch.ones(4, dtype=torch.long))
    torch.testing.assert_close(diff, phi @ (e[0] - e[1]))


def test_deeper_discriminator_has_the_reference_layout_at_28():
    D = Discriminator(ModelSpec(d_depth=3, spectral_norm=False))
    convs = [m for m in D.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 64, 4), (64, 128, 4), (128, 256, 3)]
    assert D.head.in_features == 256 * 4 * 4


@pytest.mark.parametrize(("options", "text"), [
    ({"d_depth": 1}, "depth must be 2 or 3"), ({"d_depth": 4}, "depth must be 2 or 3"),
    ({"d_projection": "mean"}, "unknown projection"),
])
def test_unsupported_discriminator_is_refused(options, text):
    with pytest.raises(ValueError, match=text):
        check_spec(ModelSpec(**options))
