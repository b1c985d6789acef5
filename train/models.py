"""The networks: the seed article's MLP GAN and a DCGAN for small square images.

Generators end in a sigmoid so images are in [0, 1]. Discriminators return logits: their
sigmoid is folded into BCE-with-logits in the loss, which is numerically stable.
Conditional variants take integer labels: the generator concatenates a learned label
embedding to z, the discriminator adds a projection term (Miyato & Koyama 2018).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from train.config import exact_fields

ARCHITECTURES = ("mlp", "dcgan")
PROJECTIONS = ("flat", "pooled")


@dataclass(frozen=True)
class NetworkSpec:
    """What a pair of networks is: enough to rebuild them from a checkpoint."""

    arch: str = "dcgan"
    latent_size: int = 100
    channels: int = 1
    image_size: int = 28
    num_classes: int = 0  # 0: unconditional
    width: int = 64  # dcgan: base feature maps; mlp: hidden units are fixed at 128
    spectral_norm: bool = False
    # Defaults are a new network's, as training's (TrainConfig); what older checkpoints lacked
    # is train.checkpoint's upgrade's business.
    d_depth: int = 3  # dcgan: the discriminator's strided convolutions (3 is the reference's depth)
    d_projection: str = "pooled"  # conditional dcgan: class term "pooled" over space, or on the flat maps
    d_batch_std: bool = False  # dcgan: the discriminator sees its batch's spread (minibatch std)
    d_classes: bool = False  # conditional: the discriminator also classifies its input (a class head)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetworkSpec:
        """The spec saved as `values` (a checkpoint's, in the current shape): every field, no
        other key. ValueError names what is missing or extra."""
        return cls(**exact_fields(cls, values))


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv and linear weights N(0, 0.02), BatchNorm N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z [n, d] (+ labels [n]) -> images [n, C, H, W] in [0, 1]."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        c, s, d, k = spec.channels, spec.image_size, spec.latent_size, spec.num_classes
        self.embed = nn.Embedding(k, k) if k else None
        d_in = d + k
        if spec.arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(d_in, 128), nn.ReLU(True),
                nn.Linear(128, 128), nn.ReLU(True),
                nn.Linear(128, c * s * s), nn.Sigmoid(),
                nn.Unflatten(1, (c, s, s)),
            )
        else:
            # Upsample from a/2 to s/4 to s/2 to s (for 28: 4, 7, 14, 28), as the
            # pytorch/examples 28x28 layout does; an odd s/4 needs a 3x3 kernel to land on it.
            w, s4 = spec.width, s // 4
            a, k2 = (s4 + 1) // 2, 3 if s4 % 2 else 4
            self.net = nn.Sequential(
                nn.Unflatten(1, (d_in, 1, 1)),
                nn.ConvTranspose2d(d_in, w * 4, a, 1, 0, bias=False),
                nn.BatchNorm2d(w * 4), nn.ReLU(True),
                # (w*4) x a x a
                nn.ConvTranspose2d(w * 4, w * 2, k2, 2, 1, bias=False),
                nn.BatchNorm2d(w * 2), nn.ReLU(True),
                # (w*2) x s/4 x s/4
                nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False),
                nn.BatchNorm2d(w), nn.ReLU(True),
                # w x s/2 x s/2
                nn.ConvTranspose2d(w, c, 4, 2, 1, bias=False),
                nn.Sigmoid(),
                # c x s x s
            )
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z)


class Discriminator(nn.Module):
    """images [n, C, H, W] (+ labels [n]) -> logits [n]."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        c, s, k = spec.channels, spec.image_size, spec.num_classes
        sn = nn.utils.parametrizations.spectral_norm if spec.spectral_norm else (lambda m: m)
        if spec.arch == "mlp":
            self.features = nn.Sequential(
                nn.Flatten(),
                sn(nn.Linear(c * s * s, 128)), nn.ReLU(True),
                sn(nn.Linear(128, 128)), nn.ReLU(True),
            )
            n_features = 128
        else:
            w, s4 = spec.width, s // 4
            # Spectral norm replaces BatchNorm's role of keeping D's gradients tame.
            norm = (lambda ch: nn.Identity()) if spec.spectral_norm else nn.BatchNorm2d
            layers = [
                sn(nn.Conv2d(c, w, 4, 2, 1, bias=False)),
                nn.LeakyReLU(0.2, True),
                # w x s/2 x s/2
                sn(nn.Conv2d(w, w * 2, 4, 2, 1, bias=False)),
                norm(w * 2), nn.LeakyReLU(0.2, True),
                # (w*2) x s/4 x s/4
            ]
            side, n_maps = s4, w * 2
            if spec.d_depth == 3:
                # The reference's third stage, s/4 to a (for 28: 7 to 4): the generator's mirror.
                side, n_maps = (s4 + 1) // 2, w * 4
                k3 = 3 if s4 % 2 else 4
                layers += [
                    sn(nn.Conv2d(w * 2, n_maps, k3, 2, 1, bias=False)),
                    norm(n_maps), nn.LeakyReLU(0.2, True),
                ]
            self.features = nn.Sequential(*layers)  # maps; forward flattens them for the head
            n_features = n_maps * side * side
        self.batch_std = spec.d_batch_std and spec.arch == "dcgan"
        n_head = n_features + (side * side if self.batch_std else 0)
        self.head = sn(nn.Linear(n_head, 1))
        # The class term <embed(y), phi(x)>: on the flattened maps it is one spatial template
        # per class; "pooled" sums the maps over space first, as Miyato & Koyama do, so it
        # scores which features are present, not where.
        self.pooled = spec.d_projection == "pooled" and spec.arch == "dcgan"
        n_project = n_maps if self.pooled else n_features
        self.project = sn(nn.Embedding(k, n_project)) if k else None
        # A class head on the features averaged over space (Odena et al. 2017's auxiliary
        # classifier), trained on real images only; the generator is asked to satisfy it.
        n_pooled = n_maps if spec.arch == "dcgan" else n_features
        self.classify = nn.Linear(n_pooled, k) if k and spec.d_classes else None
        self.apply(init_weights)
        if self.project is not None and not spec.spectral_norm:
            # Embedding's default N(0, 1) over thousands of features would drown the head's
            # term; spectral norm makes the scale moot, without it start as small as the rest.
            nn.init.normal_(self.project.weight, 0.0, 0.02)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, classes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [n]; with classes=True also the class head's logits [n, k]."""
        maps = self.features(x)
        h = maps.flatten(1)
        out = self.head(torch.cat([h, batch_std(maps).flatten(1)], 1) if self.batch_std else h).squeeze(1)
        if self.project is not None:
            phi = maps.sum(dim=(2, 3)) if self.pooled else h
            out = out + (self.project(labels) * phi).sum(dim=1)
        if not classes:
            return out
        if self.classify is None:
            raise ValueError("this discriminator has no class head (its spec's d_classes is off)")
        return out, self.classify(maps.mean(dim=(2, 3)) if maps.dim() == 4 else h)


def batch_std(maps: torch.Tensor, group: int = 4) -> torch.Tensor:
    """One extra map per sample: the feature spread within its group of `group` samples.

    Karras et al. (2018): a generator that draws the same image for every z gives groups with
    no spread, which a discriminator seeing one sample at a time cannot tell from real data.
    Groups are strided (samples i, i + n/g, ...), so a batch whose size `group` does not divide
    falls back to groups of one (no spread).
    """
    n, _, h, w = maps.shape
    g = group if n % group == 0 else 1
    y = maps.reshape(g, n // g, *maps.shape[1:])
    spread = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=1)  # [n/g, h, w]
    return spread.repeat(g, 1, 1).unsqueeze(1)  # [n, 1, h, w]


def check_spec(spec: NetworkSpec) -> None:
    """Raise ValueError for a spec the networks cannot be built for."""
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {spec.arch!r} (choose from {ARCHITECTURES})")
    if spec.arch == "dcgan" and (spec.image_size % 4 or spec.image_size < 8):
        raise ValueError(f"dcgan needs an image size divisible by 4 and >= 8, got {spec.image_size}")
    if spec.d_depth not in (2, 3):
        raise ValueError(f"the discriminator's depth must be 2 or 3, got {spec.d_depth}")
    if spec.d_projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {spec.d_projection!r} (choose from {PROJECTIONS})")
    if spec.d_classes and not spec.num_classes:
        raise ValueError("a class head in the discriminator needs a conditional model (labels)")
    if spec.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {spec.channels}")
