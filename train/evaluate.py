"""`python -m train evaluate`: sample quality of a generator, seen by the project's classifier.

All metrics live in the feature space of the classifier's penultimate layer
(train/classifier.py): FID against the test split, the classifier Inception Score,
precision and recall (Kynkäänniemi et al. 2019), and the class shares of the samples as
the classifier labels them (a collapsed generator leaves some classes nearly empty). Each
metric is also computed for as many real train images: the floor, what real data scores
with this classifier and sample count. Samples come from seeds 0..n-1 under the latent
spec; conditional models get labels seed % num_classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve import latent
from serve.repository import sha256_of
from train.classifier import WEIGHTS_DIR, Classifier, load_classifier, load_splits
from train.data import MNIST_LIKE, ImageSet
from train.errors import TrainError

# (z [n, d] float32, labels [n] int64 or None) -> images [n, C, H, W] in [0, 1]
Generate = Callable[[np.ndarray, np.ndarray | None], np.ndarray]

SAMPLES = 10_000
K_NEIGHBOURS = 3
BATCH = 500
CHUNK = 1000  # rows of a distance matrix at a time: 1000 x 10000 floats is 40 MB
RANGE_SLACK = 1e-4  # sigmoid outputs may overshoot [0, 1] by rounding, not by more


@dataclass
class Embedded:
    """A set of images as the classifier sees them: features [n, F] and logits [n, K]."""

    features: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def embed(classifier: Classifier, images: np.ndarray) -> Embedded:
    """Features and logits of uint8 or float [0, 1] images [n, C, H, W], in batches."""
    feats, logits = [], []
    for i in range(0, len(images), BATCH):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + BATCH]))
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        f = classifier.features(x)
        feats.append(f)
        logits.append(classifier.head(f))
    return Embedded(torch.cat(feats), torch.cat(logits))


def gaussian(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, in float64."""
    x = features.double().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)."""
    # tr((C1 C2)^1/2) is the sum of the square roots of the eigenvalues of C1^1/2 C2 C1^1/2, a
    # symmetric PSD matrix: eigh stays real and stable where sqrtm of the product may not.
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    m = root1 @ cov2 @ root1
    tr_root = np.sqrt(np.linalg.eigvalsh((m + m.T) / 2).clip(min=0)).sum()
    fid = ((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_root
    return max(float(fid), 0.0)  # rounding can leave -1e-12 for identical sets


def inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 for one class, the number of classes at best."""
    logp = torch.log_softmax(logits.double(), dim=1)
    log_marginal = torch.logsumexp(logp, dim=0) - np.log(len(logp))
    kl = (logp.exp() * (logp - log_marginal)).sum(dim=1).mean()
    return float(kl.exp())


def knn_radii(x: torch.Tensor, k: int = K_NEIGHBOURS) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    radii = [torch.cdist(x[i : i + CHUNK], x).kthvalue(k + 1, dim=1).values  # +1: itself at 0
             for i in range(0, len(x), CHUNK)]
    return torch.cat(radii)


def inside_share(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of points inside at least one ball (centres[j], radii[j])."""
    inside = sum(int((torch.cdist(points[i : i + CHUNK], centres) <= radii).any(dim=1).sum())
                 for i in range(0, len(points), CHUNK))
    return inside / len(points)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K_NEIGHBOURS,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls."""
    if real_radii is None:
        real_radii = knn_radii(real, k)
    return inside_share(fake, real, real_radii), inside_share(real, fake, knn_radii(fake, k))


def class_shares(logits: torch.Tensor, num_classes: int) -> np.ndarray:
    """Share of each class among the classifier's top-1 labels."""
    counts = np.bincount(logits.argmax(dim=1).numpy(), minlength=num_classes)
    return counts / counts.sum()


class Evaluator:
    """Scores image sets against a test split; the test side and the floor are computed once."""

    def __init__(self, classifier: Classifier, test: ImageSet, train: ImageSet,
                 samples: int = SAMPLES, k: int = K_NEIGHBOURS):
        if samples <= k:
            raise TrainError(f"need more than k={k} samples for precision/recall, got {samples}")
        for data in (test, train):
            if len(data) <= k:
                raise TrainError(f"dataset {data.name!r} has {len(data)} images; need more than {k}")
        self.classifier, self.samples, self.k = classifier, samples, k
        self.shape = test.shape
        c = classifier.channels
        if self.shape[0] != c or min(self.shape[1:]) < 16:
            raise TrainError(f"the test set {test.name!r} has images of shape {list(self.shape)}; the "
                             f"classifier takes [{c}, H, W] with H, W >= 16")
        self.classes = (test.classes if test.classes and len(test.classes) == classifier.num_classes
                        else [str(i) for i in range(classifier.num_classes)])
        self.test = embed(classifier, test.images)
        self.test_gaussian = gaussian(self.test.features)
        self.test_radii = knn_radii(self.test.features, k)
        self.check_shape(train.shape, f"the train set {train.name!r}")
        self.floor_samples = min(samples, len(train))
        real = train.images[: self.floor_samples]
        labels = train.labels[: self.floor_samples] if train.labels is not None else None
        self.floor = self.score_embedded(embed(classifier, real), labels)

    def check_shape(self, shape: tuple[int, ...], what: str) -> None:
        if tuple(shape) != self.shape:
            raise TrainError(f"{what}: images of shape {list(shape)}, but the test set's are "
                             f"{list(self.shape)}")

    def score_embedded(self, fake: Embedded, labels: np.ndarray | None = None) -> dict:
        """The metrics of embedded images against the test split."""
        precision, recall = precision_recall(self.test.features, fake.features, self.k, self.test_radii)
        shares = class_shares(fake.logits, self.classifier.num_classes)
        scores = {
            "fid": frechet_distance(*gaussian(fake.features), *self.test_gaussian),
            "inception_score": inception_score(fake.logits),
            "precision": precision,
            "recall": recall,
            "class_share_min": float(shares.min()),
            "class_share_max": float(shares.max()),
            "class_shares": {name: round(float(s), 4) for name, s in zip(self.classes, shares, strict=True)},
        }
        if labels is not None:
            # Conditional models: how often the classifier names the class that was asked for.
            scores["label_agreement"] = float((fake.logits.argmax(1).numpy() == labels).mean())
        return scores

    def sample(
        self, generate: Generate, latent_size: int, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (and labels, if conditional) for seeds 0..samples-1, checked for shape and range."""
        chunks = []
        for start in range(0, self.samples, BATCH):
            seeds = list(range(start, min(start + BATCH, self.samples)))
            z = latent.noise_for_seeds(seeds, latent_size)
            y = latent.labels_for_seeds(seeds, num_classes) if num_classes else None
            images = np.asarray(generate(z, y))
            if images.ndim != 4 or len(images) != len(seeds):
                raise TrainError(f"the generator returned shape {list(images.shape)} for {len(seeds)} "
                                 "samples; expected [n, C, H, W]")
            if not np.isfinite(images).all() or images.min() < -RANGE_SLACK or images.max() > 1 + RANGE_SLACK:
                raise TrainError("the generator's images must be finite and in [0, 1]")
            chunks.append(images.astype(np.float32).clip(0, 1))
        images = np.concatenate(chunks)
        self.check_shape(images.shape[1:], "the generator")
        labels = latent.labels_for_seeds(range(self.samples), num_classes) if num_classes else None
        return images, labels

    def score(self, generate: Generate, latent_size: int, num_classes: int = 0) -> dict:
        """The metrics of a generator's samples against the test split."""
        images, labels = self.sample(generate, latent_size, num_classes)
        return self.score_embedded(embed(self.classifier, images), labels)


@dataclass
class Source:
    """A generator to evaluate, with what was recorded about its training."""

    name: str
    generate: Generate
    latent_size: int
    num_classes: int
    config: dict  # the training config (dataset, data, image_size, channels)


def from_checkpoint(run: Path, raw: bool = False, temperature: float = 1.0) -> Source:
    """A run directory or checkpoint file -> its generator (the weight average if kept, unless
    raw), sampling z at `temperature` as `train export --temperature` would."""
    from train.export import load_trained_generator, with_temperature

    G, state = load_trained_generator(run, raw)
    G = with_temperature(G, temperature)

    @torch.no_grad()
    def generate(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return G(torch.from_numpy(z), torch.from_numpy(labels) if labels is not None else None).numpy()

    return Source(str(run), generate, G.spec.latent_size, G.spec.num_classes, state.get("config", {}))


def from_onnx(model: Path) -> Source:
    """models/<name>[/<version>] -> its ONNX generator, checked and loaded as the service does
    (read_spec's sha256 and metadata checks, the session's inputs and output)."""
    from serve.model import load_onnx_generator
    from serve.repository import ModelError
    from train.sample import read_model

    spec = read_model(model)
    try:
        generator = load_onnx_generator(spec, threads=len(os.sched_getaffinity(0)))
    except (ModelError, OSError) as e:
        raise TrainError(str(e)) from None
    config = spec.meta.get("training", {}).get("config", {})
    return Source(str(spec.path), generator.generate, spec.latent_size, len(spec.classes or ()), config)


def resolve_data(source: Source, dataset: str | None, data: Path | None) -> tuple[str, Path | None]:
    """The dataset kind and path: given, or the ones recorded with the generator."""
    kind = dataset or source.config.get("dataset")
    if not kind:
        raise TrainError(f"no dataset recorded with {source.name}: pass --dataset")
    if data is None:
        recorded = source.config.get("data")
        if not recorded or not Path(recorded).exists():
            raise TrainError(f"training data recorded with the generator ({recorded}) not found: pass --data")
        data = Path(recorded)
    return kind, data


def evaluate(
    checkpoint: Path | None = None, model: Path | None = None, dataset: str | None = None,
    data: Path | None = None, test_data: Path | None = None, classifier: Path | None = None,
    samples: int = SAMPLES, raw: bool = False, temperature: float | None = None,
) -> dict:
    """The evaluation report of a checkpoint or exported model (what --json writes)."""
    if raw and model is not None:
        raise TrainError("--raw needs --checkpoint: an exported model holds only the generator it published")
    if temperature is not None and model is not None:
        raise TrainError("--temperature needs --checkpoint: an exported model's temperature is in its "
                         "graph (model.json: latent.temperature)")
    source = (from_onnx(model) if model is not None
              else from_checkpoint(checkpoint, raw, 1.0 if temperature is None else temperature))
    kind, data = resolve_data(source, dataset, data)
    if classifier is None:
        if kind not in MNIST_LIKE:
            raise TrainError(f"no committed classifier for {kind} datasets: pass --classifier FILE "
                             "(train one with `python -m train classifier`)")
        classifier = WEIGHTS_DIR / f"{kind}.pt"
    train, test = load_splits(kind, data, test_data, source.config.get("image_size", 28),
                              source.config.get("channels", 1))
    evaluator = Evaluator(load_classifier(classifier), test, train, samples)
    scores = evaluator.score(source.generate, source.latent_size, source.num_classes)
    floor = {f"{key}_floor": value for key, value in evaluator.floor.items()
             if key in scores and key != "class_shares"}
    return {
        "generator": source.name,
        **({"temperature": temperature} if temperature is not None else {}),
        **scores,
        **floor,
        "samples": samples,
        "seeds": [0, samples - 1],
        "floor_samples": evaluator.floor_samples,
        "k": evaluator.k,
        "dataset": kind,
        "test_images": len(test),
        "classifier": {"file": Path(classifier).name, "sha256": sha256_of(classifier)},
    }


ROWS = [
    ("fid", "FID", "{:.3f}"),
    ("inception_score", "Inception Score", "{:.3f}"),
    ("precision", "precision (k={k})", "{:.3f}"),
    ("recall", "recall (k={k})", "{:.3f}"),
    ("class_share_min", "smallest class share", "{:.2%}"),
    ("class_share_max", "largest class share", "{:.2%}"),
    ("label_agreement", "label agreement", "{:.2%}"),
]


def format_report(report: dict) -> str:
    """The report as a readable table: the generator's figures next to the real-data floor."""
    lines = [
        f"generator   {report['generator']}"
        + (f" at temperature {report['temperature']:g}" if "temperature" in report else ""),
        f"dataset     {report['dataset']}: test split of {report['test_images']} images",
        f"samples     {report['samples']} (seeds 0-{report['samples'] - 1}); floor: "
        f"{report['floor_samples']} train images",
        f"classifier  {report['classifier']['file']} (sha256 {report['classifier']['sha256'][:12]})",
        "",
        f"{'metric':<22} {'model':>10} {'floor':>10}",
    ]
    for key, label, fmt in ROWS:
        if key in report:
            floor = report.get(f"{key}_floor")
            lines.append(f"{label.format(k=report['k']):<22} {fmt.format(report[key]):>10} "
                         f"{fmt.format(floor) if floor is not None else '-':>10}")
    shares = ", ".join(f"{name} {s:.1%}" for name, s in report["class_shares"].items())
    lines += ["", f"class shares: {shares}"]
    return "\n".join(lines)
