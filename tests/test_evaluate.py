"""Evaluation: the metrics on small synthetic features, the classifier, and the CLI end to end."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers.training import tiny_config, tiny_npz

from train.classifier import Classifier, load_classifier, train_classifier
from train.data import ImageSet
from train.errors import TrainError
from train.evaluate import (
    Evaluator,
    class_shares,
    evaluate,
    frechet_distance,
    from_checkpoint,
    gaussian,
    inception_score,
    knn_radii,
    precision_recall,
)
from train.loop import fit
from train.models import Generator, NetworkSpec

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, text):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0]


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance(*gaussian(a), *gaussian(b))


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert fid(x, x) < 1e-8


def test_fid_of_a_shifted_set_is_the_squared_shift():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    shift = torch.full((16,), 0.5)
    # Same covariance, means 0.5 apart in 16 dimensions: 16 * 0.25 = 4.
    assert fid(x, x + shift) == pytest.approx(4.0, rel=1e-6)
    assert fid(x, x + 2 * shift) == pytest.approx(16.0, rel=1e-6)


def test_fid_agrees_with_sqrtm_of_the_product():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(400, 8, generator=g)
    b = torch.randn(400, 8, generator=g) @ torch.randn(8, 8, generator=g) + 1.0
    (mu1, c1), (mu2, c2) = gaussian(a), gaussian(b)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * root)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-6)


def test_inception_score_of_one_class_is_one():
    logits = torch.zeros(100, 10)
    logits[:, 3] = 20.0
    assert inception_score(logits) == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_confident_uniform_classes_is_the_class_count():
    logits = torch.full((100, 10), -20.0)
    logits[torch.arange(100), torch.arange(100) % 10] = 20.0
    assert inception_score(logits) == pytest.approx(10.0, rel=1e-4)
    # Unsure predictions score lower even when the classes are balanced.
    assert inception_score(logits / 20) < 9.0


def test_knn_radii_match_a_brute_force_search():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    expected = d.sort(dim=1).values[:, 3]  # the 3rd nearest other point
    assert torch.allclose(knn_radii(x, 3), expected, atol=1e-4)


def test_precision_recall_of_identical_sets_is_one():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(3))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    g = torch.Generator().manual_seed(4)
    real, fake = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_a_collapsed_generator_keeps_precision_and_loses_recall():
    g = torch.Generator().manual_seed(5)
    real = torch.cat([torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 50.0])
    fake = torch.randn(400, 8, generator=g)  # only the first of the two modes
    precision, recall = precision_recall(real, fake)
    assert precision > 0.7
    assert recall < 0.5  # the second mode, half of the real set, is missed
    both = torch.cat([torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 50.0])
    assert precision_recall(real, both)[1] > 0.7


def test_class_shares():
    logits = torch.zeros(10, 4)
    logits[torch.arange(10), torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])] = 1.0
    assert class_shares(logits, 4).tolist() == [0.5, 0.3, 0.2, 0.0]


def tiny_classifier(path: Path, num_classes: int = 3) -> Path:
    torch.manual_seed(0)
    torch.save(Classifier(1, num_classes, (4, 8, 16)).state_dict(), path)
    return path


def image_set(n: int, seed: int, classes: int = 3) -> ImageSet:
    images = np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    return ImageSet("synthetic", images, np.arange(n) % classes, [str(i) for i in range(classes)])


def test_classifier_weights_load_with_their_sizes(tmp_path):
    model = load_classifier(tiny_classifier(tmp_path / "c.pt", num_classes=5))
    assert (model.channels, model.num_classes) == (1, 5)
    assert model.features(torch.rand(2, 1, 28, 28)).shape == (2, 16)


def test_classifier_training_is_deterministic_and_learns():
    data = image_set(64, 6, classes=2)
    data.images[data.labels == 1] //= 4  # class 1 is dark: easy to tell apart
    a = train_classifier(data, epochs=3, seed=7, batch_size=16, progress=False)
    b = train_classifier(data, epochs=3, seed=7, batch_size=16, progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with torch.no_grad():
        predicted = a(torch.from_numpy(data.images).float() / 255).argmax(1).numpy()
    assert (predicted == data.labels).mean() > 0.9


def test_a_plain_function_generator_is_scored(tmp_path):
    evaluator = Evaluator(load_classifier(tiny_classifier(tmp_path / "c.pt")), image_set(40, 8),
                          image_set(40, 9), samples=20)
    calls = []

    def constant(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        calls.append((z.shape, labels))
        return np.full((len(z), 1, 28, 28), 0.5, dtype=np.float32)

    scores = evaluator.score(constant, latent_size=7)
    assert calls == [((20, 7), None)]
    # One image repeated: one class takes every sample, the score is 1, and the single point
    # lies on neither manifold of the random test images.
    assert scores["class_share_max"] == 1.0 and scores["class_share_min"] == 0.0
    assert scores["inception_score"] == pytest.approx(1.0)
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0
    assert evaluator.floor["precision"] > 0.5 and evaluator.floor["recall"] > 0.5
    assert scores["fid"] > 10 * evaluator.floor["fid"]


def test_generator_output_outside_the_range_is_refused(tmp_path):
    evaluator = Evaluator(load_classifier(tiny_classifier(tmp_path / "c.pt")), image_set(40, 8),
                          image_set(40, 9), samples=8)
    with pytest.raises(TrainError, match=r"in \[0, 1\]"):
        evaluator.score(lambda z, y: np.full((len(z), 1, 28, 28), 2.0), latent_size=4)
    with pytest.raises(TrainError, match="shape"):
        evaluator.score(lambda z, y: np.zeros((len(z), 28, 28)), latent_size=4)
    with pytest.raises(TrainError, match=r"the generator: images of shape \[1, 32, 32\]"):
        evaluator.score(lambda z, y: np.zeros((len(z), 1, 32, 32)), latent_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny conditional run, a tiny random classifier and a tiny labelled test split."""
    tmp = tmp_path_factory.mktemp("evaluate")
    run = fit(tiny_config(tmp, steps=2, conditional=True), progress=False)
    return {"run": run, "classifier": tiny_classifier(tmp / "classifier.pt"),
            "test": tiny_npz(tmp / "test", n=24), "tmp": tmp}


def evaluate_args(tiny, *extra):
    return ["evaluate", "--checkpoint", tiny["run"], "--test-data", tiny["test"],
            "--classifier", tiny["classifier"], "--samples", 16, *extra]


def test_cli_evaluates_and_the_json_goes_into_the_export(tiny, tmp_path):
    result = cli(*evaluate_args(tiny, "--json", tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    assert "FID" in result.stdout and "floor" in result.stdout and "label agreement" in result.stdout
    report = json.loads((tmp_path / "m.json").read_text())
    for key in ("fid", "fid_floor", "inception_score", "precision", "precision_floor", "recall",
                "recall_floor", "class_share_min", "class_share_max", "label_agreement"):
        assert isinstance(report[key], float), key
    assert report["samples"] == 16 and report["floor_samples"] == 16 and report["dataset"] == "arrays"
    assert 1.0 <= report["inception_score"] <= 3.0
    assert sum(report["class_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["classifier"]["sha256"] == hashlib.sha256(tiny["classifier"].read_bytes()).hexdigest()

    exported = cli("export", tiny["run"], "--name", "m", "--models-dir", tmp_path / "models",
                   "--metrics", tmp_path / "m.json")
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp_path / "models" / "m" / "1" / "model.json").read_text())
    assert meta["metrics"] == report

    # The exported model scores as its checkpoint did: onnxruntime agrees with torch.
    args = evaluate_args(tiny, "--json", tmp_path / "o.json")[3:]  # all but --checkpoint
    onnx = cli("evaluate", "--model", tmp_path / "models" / "m", *args)
    assert onnx.returncode == 0, onnx.stderr
    again = json.loads((tmp_path / "o.json").read_text())
    assert again["fid"] == pytest.approx(report["fid"], rel=1e-3)
    assert again["class_shares"] == report["class_shares"]


def test_cli_trains_a_classifier(tiny, tmp_path):
    result = cli("classifier", "--dataset", "arrays", "--data", tiny["run"].parent / "tiny.npz",
                 "--test-data", tiny["test"], "--epochs", 1, "--out", tmp_path / "c.pt")
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "c.json").read_text())
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["test_images"] == 24
    assert load_classifier(tmp_path / "c.pt").num_classes == 3


def test_bad_classifier_file_is_one_line(tiny, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    args = evaluate_args(tiny)
    args[args.index("--classifier") + 1] = tmp_path / "bad.pt"
    assert_one_line_error(cli(*args), "not a classifier of this project")


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"--checkpoint": "no/such/run"}, "checkpoint not found"),
        ({"--classifier": "no/such.pt"}, "classifier weights not found"),
        ({"--test-data": None}, "--test-data PATH is required"),
        ({"--classifier": None}, "no committed classifier for arrays"),
        ({"--samples": 3}, "need more than k=3 samples"),
    ],
)
def test_bad_input_is_one_line(tiny, change, text):
    args = evaluate_args(tiny)
    for flag, value in change.items():
        i = args.index(flag)
        args[i + 1 : i + 2] = [value] if value is not None else []
        if value is None:
            del args[i]
    assert_one_line_error(cli(*args), text)


def test_unlabelled_data_cannot_train_a_classifier(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 28, 28), dtype=np.uint8))
    result = cli("classifier", "--dataset", "arrays", "--data", tmp_path / "x.npy",
                 "--test-data", tmp_path / "x.npy", "--out", tmp_path / "c.pt")
    assert_one_line_error(result, "has no labels")


def test_raw_scores_the_trained_generator_instead_of_its_average(tiny, tmp_path):
    state = torch.load(tiny["run"] / "checkpoint.pt", weights_only=False)
    assert state["ema"] is not None  # the weight average is on by default
    z = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    average = from_checkpoint(tiny["run"]).generate(z, y)
    raw = from_checkpoint(tiny["run"], raw=True).generate(z, y)
    # After two steps the two weight sets are close but not equal; each source must run
    # exactly its own.
    assert not np.array_equal(average, raw)
    for weights, images in ((state["generator"], raw), (state["ema"], average)):
        G = Generator(NetworkSpec(**state["spec"])).eval()
        G.load_state_dict(weights)
        with torch.no_grad():
            np.testing.assert_array_equal(images, G(torch.from_numpy(z), torch.from_numpy(y)).numpy())
    kwargs = dict(test_data=tiny["test"], classifier=tiny["classifier"], samples=16)
    assert evaluate(tiny["run"], raw=True, **kwargs)["fid"] != evaluate(tiny["run"], **kwargs)["fid"]
    with pytest.raises(TrainError, match="--raw needs --checkpoint"):
        evaluate(model=tmp_path, raw=True, **kwargs)


def test_temperature_scores_the_generator_on_scaled_noise_as_its_export_does(tiny, tmp_path):
    z = np.random.default_rng(1).standard_normal((4, 100)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    np.testing.assert_array_equal(from_checkpoint(tiny["run"], temperature=1.5).generate(z, y),
                                  from_checkpoint(tiny["run"]).generate(1.5 * z, y))
    report = tmp_path / "t.json"
    result = cli(*evaluate_args(tiny, "--temperature", 1.5, "--json", report))
    assert result.returncode == 0, result.stderr
    assert "at temperature 1.5" in result.stdout
    scored = json.loads(report.read_text())
    assert scored["temperature"] == 1.5

    # The export at that temperature scores the same on onnxruntime, and says so.
    exported = cli("export", tiny["run"], "--name", "t", "--models-dir", tmp_path / "models",
                   "--temperature", 1.5)
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp_path / "models" / "t" / "1" / "model.json").read_text())
    assert meta["latent"]["temperature"] == 1.5
    args = evaluate_args(tiny, "--json", tmp_path / "o.json")[3:]
    assert cli("evaluate", "--model", tmp_path / "models" / "t", *args).returncode == 0
    assert json.loads((tmp_path / "o.json").read_text())["fid"] == pytest.approx(scored["fid"], rel=1e-3)
    # An exported model's temperature is in its graph: asking for another is an error.
    assert_one_line_error(cli("evaluate", "--model", tmp_path / "models" / "t", *args, "--temperature", 2),
                          "--temperature needs --checkpoint")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_temperature_that_is_not_positive_is_one_line(tiny, value):
    assert_one_line_error(cli(*evaluate_args(tiny, "--temperature", value)),
                          "--temperature must be a positive number")
