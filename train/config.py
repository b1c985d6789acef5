"""The training configuration: one dataclass, filled from the command line or a test."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in checkpoints and model.json."""

    dataset: str = "mnist"  # mnist, fashion-mnist, folder, arrays
    data: str | None = None  # directory of IDX files, image folder, or .npy/.npz file
    download: bool = False  # fetch mnist/fashion-mnist into `data` from the official mirrors
    image_size: int = 28  # folder datasets are resized to this
    channels: int = 1  # folder datasets: 1 (grayscale) or 3 (RGB)
    arch: str = "dcgan"
    latent_size: int = 100
    width: int = 64
    conditional: bool = False
    # The discriminator, as measured (docs/evaluation.md): the reference's three strided
    # convolutions with BatchNorm, and for conditional runs the class term on the maps summed
    # over space. Spectral norm in its place made conditional generators ignore their noise.
    d_depth: int = 3  # dcgan discriminator's strided convolutions: 3 as in the reference, or 2
    d_projection: str = "pooled"  # conditional dcgan: class term "pooled" over space, or "flat"
    d_batch_std: bool = False  # dcgan discriminator sees its batch's spread (minibatch std)
    spectral_norm: bool = False  # in the discriminator, replacing its BatchNorm
    loss: str = "bce"  # bce (non-saturating) or hinge
    label_smoothing: float = 0.0  # one-sided: real targets are 1 - label_smoothing
    # Mode seeking (Mao et al. 2019): weight of 1 / (image distance / noise distance) between
    # pairs of samples of one class in the generator's loss; pushes it to use its noise. 0: off.
    mode_seeking: float = 0.0
    # Class loss (conditional runs): the discriminator gains a class head trained on real
    # images, and the generator's loss gains this weight times its cross-entropy on the
    # generated images and the labels asked for, so a sample shows the class it was drawn for. 0: off.
    class_loss: float = 0.0
    # 0: that class loss is the cross-entropy. M > 0: a hinge, max(0, M - (logit of the asked
    # class - the largest other logit)), so only samples not already read as their class by a
    # margin of M are pushed, not every sample towards its class's most typical look.
    class_margin: float = 0.0
    ema: float = 0.999  # decay of the generator's weight average; 0 turns it off (measured: FID 8.2 -> 4.9)
    epochs: int = 5
    steps: int | None = None  # stop after this many steps in total (overrides epochs)
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    out: str = "runs/default"
    log_every: int = 50
    sample_count: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config saved as `values` (a checkpoint's, upgraded to the current shape by
        train.checkpoint): every field, no other key. ValueError names what is missing or extra."""
        return cls(**exact_fields(cls, values))


def exact_fields(cls: type, values: dict) -> dict:
    """values, checked to hold exactly the fields of the dataclass cls (ValueError naming the
    keys otherwise): a saved dataclass is read as saved, with no defaults filled in."""
    names = [f.name for f in fields(cls)]
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"lacks {', '.join(map(repr, missing))}")
    unknown = [key for key in values if key not in names]
    if unknown:
        raise ValueError(f"holds unknown {', '.join(map(repr, unknown))}")
    return dict(values)
