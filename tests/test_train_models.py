"""The networks' shapes for every supported size, depth and conditioning."""

import pytest
import torch

from train.models import Discriminator, Generator, NetworkSpec, batch_std, check_spec


@pytest.mark.parametrize("size", [8, 12, 28, 32])
@pytest.mark.parametrize("d_depth", [2, 3])
@pytest.mark.parametrize(("classes", "spectral_norm", "projection", "spread"),
                         [(0, False, "flat", False), (10, True, "flat", True), (10, False, "pooled", True)])
def test_dcgan_shapes(size, d_depth, classes, spectral_norm, projection, spread):
    spec = NetworkSpec(image_size=size, width=8, num_classes=classes, spectral_norm=spectral_norm,
                     d_depth=d_depth, d_projection=projection, d_batch_std=spread)
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
    D = Discriminator(NetworkSpec(num_classes=3, width=8, d_projection=projection)).eval()
    x = torch.rand(4, 1, 28, 28)
    maps = D.features(x)
    phi = maps.sum(dim=(2, 3)) if projection == "pooled" else maps.flatten(1)
    assert D.project.weight.shape == (3, phi.shape[1])
    # Two labels differ by exactly <e_a - e_b, phi(x)>, the unconditional head cancels.
    e = D.project.weight
    diff = D(x, torch.zeros(4, dtype=torch.long)) - D(x, torch.ones(4, dtype=torch.long))
    torch.testing.assert_close(diff, phi @ (e[0] - e[1]))


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_class_head_reads_the_features_averaged_over_space(arch):
    torch.manual_seed(0)
    D = Discriminator(NetworkSpec(arch=arch, num_classes=3, width=8, d_depth=3, d_classes=True)).eval()
    x, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    out, classes = D(x, labels, classes=True)
    torch.testing.assert_close(out, D(x, labels))  # the verdict is the one without the head
    maps = D.features(x)
    pooled = maps.mean(dim=(2, 3)) if arch == "dcgan" else maps
    torch.testing.assert_close(classes, D.classify(pooled))
    assert classes.shape == (4, 3)
    with pytest.raises(ValueError, match="no class head"):
        Discriminator(NetworkSpec(arch=arch, num_classes=3, width=8))(x, labels, classes=True)


def test_deeper_discriminator_has_the_reference_layout_at_28():
    D = Discriminator(NetworkSpec(d_depth=3, spectral_norm=False))
    convs = [m for m in D.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 64, 4), (64, 128, 4), (128, 256, 3)]
    assert D.head.in_features == 256 * 4 * 4


@pytest.mark.parametrize(("options", "text"), [
    ({"d_depth": 1}, "depth must be 2 or 3"), ({"d_depth": 4}, "depth must be 2 or 3"),
    ({"d_projection": "mean"}, "unknown projection"),
    ({"d_classes": True}, "class head in the discriminator needs a conditional model"),
])
def test_unsupported_discriminator_is_refused(options, text):
    with pytest.raises(ValueError, match=text):
        check_spec(NetworkSpec(**options))


def test_batch_spread_is_zero_for_identical_samples_and_per_group_otherwise():
    same = torch.randn(1, 3, 4, 4).repeat(8, 1, 1, 1)
    assert batch_std(same).max() < 1e-3
    maps = torch.randn(8, 3, 4, 4)
    spread = batch_std(maps)
    assert spread.shape == (8, 1, 4, 4)
    # Groups are strided: samples 1, 3, 5, 7 form one group of four.
    group = maps[1::2]
    expected = group.std(dim=0, unbiased=False).mean(dim=0)
    for i in (1, 3, 5, 7):
        torch.testing.assert_close(spread[i, 0], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(spread[0], spread[1])
    # A batch that groups of four do not divide has no spread to show.
    assert batch_std(torch.randn(6, 3, 4, 4)).max() < 1e-3


def test_batch_spread_changes_the_discriminator_s_verdict_on_a_collapsed_batch():
    torch.manual_seed(0)
    D = Discriminator(NetworkSpec(width=8, d_depth=2, d_batch_std=True))
    with torch.no_grad():
        D.head.weight[0, -7 * 7:] = 1.0  # weigh the spread map (7 x 7 at 28 px) heavily
        varied = torch.rand(8, 1, 28, 28)
        collapsed = varied[:1].repeat(8, 1, 1, 1)
        assert D(varied)[0] > D(collapsed)[0] + 0.1


def test_class_term_without_spectral_norm_starts_as_small_as_the_other_weights():
    D = Discriminator(NetworkSpec(num_classes=10, spectral_norm=False))
    assert D.project.weight.std() < 0.05
