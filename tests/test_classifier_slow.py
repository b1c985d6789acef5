"""Slow: the committed classifiers on the real test splits, and the metrics they give real data."""

import json
from pathlib import Path

import pytest

from serve.repository import sha256_of
from train.classifier import WEIGHTS_DIR, accuracy, load_classifier
from train.data import load_mnist_like
from train.evaluate import Evaluator, embed

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.slow

DATASETS = [("mnist", 0.99), ("fashion-mnist", 0.90)]


def real_data(name: str) -> Path:
    directory = DATA / name
    if not directory.is_dir():
        pytest.skip(f"real {name} not present at {directory}")
    return directory


@pytest.mark.parametrize(("name", "minimum"), DATASETS)
def test_committed_classifier_accuracy(name, minimum):
    test = load_mnist_like(name, real_data(name), "test")
    weights = WEIGHTS_DIR / f"{name}.pt"
    found = accuracy(load_classifier(weights), test)
    assert found >= minimum
    recorded = json.loads(weights.with_suffix(".json").read_text())
    assert recorded["sha256"] == sha256_of(weights)  # the JSON describes these very weights
    assert found == pytest.approx(recorded["test_accuracy"], abs=1e-4)


@pytest.mark.parametrize(("name", "minimum"), DATASETS)
def test_real_images_score_near_the_floor_and_a_collapsed_set_does_not(name, minimum):
    directory = real_data(name)
    train, test = load_mnist_like(name, directory, "train"), load_mnist_like(name, directory, "test")
    evaluator = Evaluator(load_classifier(WEIGHTS_DIR / f"{name}.pt"), test, train, samples=10_000)
    floor = evaluator.floor
    assert floor["fid"] < 3.0  # measured: 1.27 on MNIST, 0.31 on Fashion-MNIST
    assert floor["precision"] > 0.7 and floor["recall"] > 0.7
    assert floor["inception_score"] > 7.5
    assert 0.08 < floor["class_share_min"] and floor["class_share_max"] < 0.12

    # Real train images beyond the floor's 10,000, all of one class: a collapsed generator.
    rest = train.images[10_000:][train.labels[10_000:] == 1]
    collapsed = evaluator.score_embedded(embed(evaluator.classifier, rest))
    assert collapsed["class_share_max"] > 0.95
    assert collapsed["recall"] < 0.3
    assert collapsed["fid"] > 100 * floor["fid"]
