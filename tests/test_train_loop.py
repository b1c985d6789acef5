"""One training step per architecture, checkpoints, exact resume, and Ctrl-C."""

import copy
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.training import tiny_config

from train import loop
from train.checkpoint import load_checkpoint
from train.errors import TrainError
from train.loop import Interrupted, fit
from train.models import Generator, NetworkSpec

ROOT = Path(__file__).resolve().parents[1]


def params(run_dir):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return state["step"], {**state["generator"], **{f"d.{k}": v for k, v in state["discriminator"].items()}}


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("conditional", [False, True])
def test_training_changes_weights_and_writes_outputs(tmp_path, arch, conditional):
    cfg = tiny_config(tmp_path, arch=arch, conditional=conditional, steps=5, ema=0.9)
    out = fit(cfg, progress=False)
    step, after = params(out)
    assert step == 5
    fresh = loop.Run(cfg, loop.spec_for(cfg, loop.load_dataset("arrays", cfg.data)), torch.device("cpu"))
    assert any(not torch.equal(after[k], v) for k, v in fresh.G.state_dict().items())
    for name in ("config.json", "metrics.csv", "loss.png", "samples/final.png", "samples/epoch_0001.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 5]
    for r in rows:
        assert 0.0 < float(r["d_real"]) < 1.0 and 0.0 < float(r["d_fake"]) < 1.0
    assert json.loads((out / "config.json").read_text())["arch"] == arch


@pytest.mark.parametrize("options", [
    {},
    {"loss": "hinge", "spectral_norm": True, "label_smoothing": 0.1},
    {"d_depth": 3, "spectral_norm": False, "conditional": True, "d_projection": "pooled"},
    {"d_batch_std": True, "conditional": True},
    {"mode_seeking": 1.0, "conditional": True},
    {"mode_seeking": 1.0, "class_loss": 1.0, "conditional": True},
    {"class_loss": 1.0, "class_margin": 2.0, "conditional": True},
])
def test_resume_equals_uninterrupted(tmp_path, options):
    straight = fit(tiny_config(tmp_path / "a", steps=7, ema=0.9, **options), progress=False)
    fit(tiny_config(tmp_path / "b", steps=3, ema=0.9, **options), progress=False)
    resumed = fit(tiny_config(tmp_path / "b", steps=7, ema=0.9, **options), resume=True, progress=False)
    s1, p1 = params(straight)
    s2, p2 = params(resumed)
    assert s1 == s2 == 7
    for k in p1:
        assert torch.equal(p1[k], p2[k]), k
    e1 = load_checkpoint(straight / "checkpoint.pt")["ema"]
    e2 = load_checkpoint(resumed / "checkpoint.pt")["ema"]
    assert all(torch.equal(e1[k], e2[k]) for k in e1)


def test_mode_seeking_term_is_the_inverse_distance_ratio():
    z = torch.zeros(4, 3)
    z[2:] = 2.0  # each pair's noises are 2 apart in every coordinate
    fake = torch.zeros(4, 1, 2, 2)
    fake[2:] = 0.5  # and their images 0.5 apart in every pixel
    assert loop.mode_seeking_term(fake, z).item() == pytest.approx(1 / (0.5 / 2.0 + 1e-5))
    # A generator that ignores its noise pays the most.
    assert loop.mode_seeking_term(torch.ones(4, 1, 2, 2), z).item() == pytest.approx(1e5)


def test_mode_seeking_gradient_pushes_a_pair_apart():
    fake = torch.tensor([[0.2], [0.9], [0.3], [0.6]], requires_grad=True)  # pairs (0, 2), (1, 3)
    loop.mode_seeking_term(fake, torch.tensor([[0.0], [0.0], [1.0], [1.0]])).backward()
    step = -fake.grad  # the direction gradient descent moves the images
    assert step[0] < 0 < step[2]  # 0.2 and 0.3 move apart
    assert step[1] > 0 > step[3]  # and so do 0.9 and 0.6


def test_mode_seeking_pairs_share_labels_and_enter_the_generator_gradient(tmp_path):
    def first_step(weight):
        cfg = tiny_config(tmp_path / str(weight), steps=1, conditional=True, mode_seeking=weight)
        run = loop.Run(cfg, loop.spec_for(cfg, loop.load_dataset("arrays", cfg.data)), torch.device("cpu"))
        seen = []
        run.G.register_forward_hook(lambda module, args, out: seen.append(args[1].clone()))
        run.train_step(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                       torch.zeros(8, dtype=torch.long))
        return seen[0], [p.grad.clone() for p in run.G.parameters()]

    labels, grads = first_step(1.0)
    assert torch.equal(labels[:4], labels[4:])
    # A negligible weight draws the same labels and noise: only the term's share differs.
    same_labels, plain = first_step(1e-12)
    assert torch.equal(labels, same_labels)
    assert any(not torch.allclose(a, b) for a, b in zip(grads, plain, strict=True))


def first_step_run(cfg):
    """A fresh run after one step on a fixed batch of random images, all labelled 1."""
    run = loop.Run(cfg, loop.spec_for(cfg, loop.load_dataset("arrays", cfg.data)), torch.device("cpu"))
    real = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return run, real, torch.ones(8, dtype=torch.long)


def test_class_head_learns_from_real_images_only(tmp_path):
    run, real, labels = first_step_run(tiny_config(tmp_path, steps=1, conditional=True, class_loss=0.5))
    before = copy.deepcopy(run.D)
    run.train_step(real, labels)
    # The head's gradient is the real images' class loss alone: generated images do not
    # reach it (the generator's step leaves D's gradients untouched).
    _, classes = before(real, labels, classes=True)
    (0.5 * torch.nn.functional.cross_entropy(classes, labels)).backward()
    torch.testing.assert_close(run.D.classify.weight.grad, before.classify.weight.grad)
    assert before.classify.weight.grad.abs().sum() > 0


def test_class_loss_enters_the_generator_gradient(tmp_path):
    def generator_grads(weight):
        run, real, labels = first_step_run(
            tiny_config(tmp_path / str(weight), steps=1, conditional=True, class_loss=weight))
        run.train_step(real, labels)
        return [p.grad.clone() for p in run.G.parameters()]

    # A negligible weight draws the same labels and noise: only the class loss's share differs.
    plain, with_loss = generator_grads(1e-12), generator_grads(1.0)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, with_loss, strict=True))


def test_class_term_is_cross_entropy_or_a_hinge_on_the_asked_class_s_lead():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.5, 2.0], [4.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 0])
    torch.testing.assert_close(loop.class_term(logits, labels, 0.0),
                               torch.nn.functional.cross_entropy(logits, labels))
    # Leads over the best other class: 2, 0.5 and -1; a margin of 2 charges 0, 1.5 and 3.
    assert loop.class_term(logits, labels, 2.0).item() == pytest.approx((0 + 1.5 + 3) / 3)
    # A sample already read as its class by the margin is not pushed any further.
    logits.requires_grad_(True)
    loop.class_term(logits, labels, 2.0).backward()
    assert torch.equal(logits.grad[0], torch.zeros(3))
    assert logits.grad[2, 0] < 0 < logits.grad[2, 2]  # descent raises the asked class's logit


@pytest.mark.parametrize(("options", "text"), [
    ({"class_loss": -1.0, "conditional": True}, "--class-loss must be 0 or more"),
    ({"class_loss": 1.0, "class_margin": -1.0, "conditional": True}, "--class-margin must be 0 or more"),
    ({"class_loss": 1.0}, "--class-loss needs --conditional"),
    ({"class_margin": 2.0, "conditional": True}, "--class-margin shapes the class loss"),
])
def test_bad_class_loss_is_refused(tmp_path, options, text):
    with pytest.raises(TrainError, match=text):
        fit(tiny_config(tmp_path, **options), progress=False)


def test_recalibrated_statistics_are_the_generators_own_output_statistics():
    spec = NetworkSpec(width=8, num_classes=3)
    G = Generator(spec).eval()
    first_norm = next(m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    first_norm.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    loop.recalibrate_batchnorm(G, spec, torch.device("cpu"), seed=5, samples=300, batch=100)
    seen = torch.cat(inputs)
    assert seen.shape[0] == 300 and not G.training  # batch statistics used, eval mode restored
    assert torch.allclose(first_norm.running_mean, seen.mean(dim=(0, 2, 3)), atol=1e-6)
    per_batch_var = torch.stack([b.var(dim=(0, 2, 3)) for b in seen.split(100)])
    assert torch.allclose(first_norm.running_var, per_batch_var.mean(0), rtol=1e-4)
    assert first_norm.momentum == 0.1  # restored for training


def test_saved_weight_average_carries_its_own_statistics(tmp_path):
    run = fit(tiny_config(tmp_path, steps=3, ema=0.9, conditional=True), progress=False)
    state = load_checkpoint(run / "checkpoint.pt")
    spec = NetworkSpec(**state["spec"])
    G = Generator(spec)
    G.load_state_dict(state["ema"])
    loop.recalibrate_batchnorm(G, spec, torch.device("cpu"), seed=state["config"]["seed"])
    for key, value in G.state_dict().items():
        assert torch.equal(state["ema"][key], value), key
    # The trained generator's own statistics are not the average's.
    assert not torch.equal(state["ema"]["net.2.running_mean"], state["generator"]["net.2.running_mean"])


def test_negative_mode_seeking_is_refused(tmp_path):
    with pytest.raises(TrainError, match="--mode-seeking must be 0 or more"):
        fit(tiny_config(tmp_path, mode_seeking=-1.0), progress=False)


def test_a_run_saved_before_the_discriminator_options_resumes_as_it_was(tmp_path):
    # What such a run was: two convolutions, the flat class term, no batch spread.
    old = {"d_depth": 2, "d_projection": "flat", "d_batch_std": False}
    run = fit(tiny_config(tmp_path, steps=2, conditional=True, mode_seeking=0.0, **old), progress=False)
    state = load_checkpoint(run / "checkpoint.pt")
    for key in ("d_depth", "d_projection", "d_batch_std"):
        del state["config"][key], state["spec"][key]
    for key in ("mode_seeking", "class_loss", "class_margin"):
        del state["config"][key]
    del state["spec"]["d_classes"]
    state["format"] = "gan-checkpoint/1"  # as such runs were marked
    torch.save(state, run / "checkpoint.pt")
    # Today's defaults differ (three convolutions, pooled): the saved run, not they, decides.
    fit(tiny_config(tmp_path, steps=4), resume=True, progress=False)
    resumed = load_checkpoint(run / "checkpoint.pt")
    assert resumed["step"] == 4
    assert (resumed["spec"]["d_depth"], resumed["spec"]["d_projection"]) == (2, "flat")
    assert resumed["config"]["mode_seeking"] == resumed["config"]["class_loss"] == 0.0
    assert resumed["config"]["class_margin"] == 0.0
    assert resumed["spec"]["d_classes"] is False


def test_ctrl_c_saves_checkpoint_and_resume_continues(tmp_path, monkeypatch):
    straight = fit(tiny_config(tmp_path / "a", steps=6), progress=False)
    real_step = loop.Run.train_step

    def interrupt_at_4(self, *args):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(loop.Run, "train_step", interrupt_at_4)
    with pytest.raises(Interrupted, match="step 4"):
        fit(tiny_config(tmp_path / "b", steps=6), progress=False)
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["step"] == 4
    monkeypatch.setattr(loop.Run, "train_step", real_step)
    resumed = fit(tiny_config(tmp_path / "b", steps=6), resume=True, progress=False)
    p1, p2 = params(straight)[1], params(resumed)[1]
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_existing_run_needs_resume(tmp_path):
    fit(tiny_config(tmp_path, steps=1), progress=False)
    with pytest.raises(TrainError, match="--resume"):
        fit(tiny_config(tmp_path, steps=2), progress=False)


def test_resume_with_other_architecture_is_refused(tmp_path):
    fit(tiny_config(tmp_path, arch="mlp", steps=1), progress=False)
    with pytest.raises(TrainError, match="'mlp' checkpoint"):
        fit(tiny_config(tmp_path, arch="dcgan", steps=2), resume=True, progress=False)


def test_corrupt_checkpoint_is_refused(tmp_path):
    fit(tiny_config(tmp_path, steps=1), progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        fit(tiny_config(tmp_path, steps=2), resume=True, progress=False)


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="not writable"):
        fit(tiny_config(tmp_path, out=str(tmp_path / "file" / "run")), progress=False)


def test_conditional_needs_labels(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((16, 28, 28), np.uint8))
    with pytest.raises(TrainError, match="needs labels"):
        fit(tiny_config(tmp_path, data=str(tmp_path / "x.npy"), conditional=True), progress=False)


def test_epoch_order_is_a_permutation_that_changes_per_epoch():
    a, b = loop.epoch_order(0, 0, 100), loop.epoch_order(0, 1, 100)
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, b) and torch.equal(a, loop.epoch_order(0, 0, 100))


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, steps=1)
    Path(cfg.out).mkdir(parents=True)
    with loop.run_lock(Path(cfg.out)):
        with pytest.raises(TrainError, match="in use by another training run"):
            fit(cfg, progress=False)
    assert fit(cfg, progress=False).is_dir()  # the lock goes with the run holding it


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    cfg = tiny_config(tmp_path, steps=100_000, log_every=1)
    args = ["fit", "--dataset", "arrays", "--data", cfg.data, "--batch-size", "8", "--width", "8",
            "--steps", "100000", "--log-every", "1", "--device", "cpu", "--out", cfg.out, "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(cfg.out) / "metrics.csv"
    deadline = time.monotonic() + 120  # a bound on the wait, not an expectation
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with --resume" in err and "Traceback" not in err
    step = load_checkpoint(Path(cfg.out) / "checkpoint.pt")["step"]
    assert step >= 3
    resumed = fit(tiny_config(tmp_path, steps=step + 2, log_every=1), resume=True, progress=False)
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == step + 2
