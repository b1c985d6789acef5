"""Checkpoints of every shape this project has written load, resume and export as they did.

Until format 2 every checkpoint was marked gan-checkpoint/1, and options were added to it one
after another; a run saved before an option existed lacks its keys. Each old shape is built
here from a current checkpoint by removing what that shape lacked and marking it as version 1.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.training import tiny_config

from train import checkpoint
from train.checkpoint import load_checkpoint, upgrade
from train.config import TrainConfig
from train.errors import TrainError
from train.export import export, load_trained_generator
from train.loop import fit
from train.models import NetworkSpec

ROOT = Path(__file__).resolve().parents[1]

# What each change to the version 1 shape added, oldest first: (top-level, config, spec) keys.
ADDED = [
    (["resumed"], [], []),  # model.json records the commands that resumed a run
    ([], ["d_depth"], ["d_depth"]),  # the discriminator depth option
    ([], ["d_projection"], ["d_projection"]),  # the pooled projection option
    ([], ["d_batch_std"], ["d_batch_std"]),  # the minibatch-spread option
    ([], ["mode_seeking"], []),  # the mode-seeking term
    ([], ["class_loss"], ["d_classes"]),  # the class loss and the discriminator's class head
    ([], ["class_margin"], []),  # the class loss's margin
]
# Shape i: a version 1 checkpoint written before change i (len(ADDED): after all of them).
SHAPES = list(range(len(ADDED) + 1))
# Such runs trained as these options' absence does: the values the old loading filled in.
OLD_RUN = {"d_depth": 2, "d_projection": "flat", "d_batch_std": False, "mode_seeking": 0.0,
           "class_loss": 0.0, "class_margin": 0.0}


def old_shape(state: dict, shape: int) -> dict:
    """state as a version 1 checkpoint written before change `shape` of ADDED."""
    old = {**state, "config": dict(state["config"]), "spec": dict(state["spec"]),
           "format": "gan-checkpoint/1"}
    for top, config, spec in ADDED[shape:]:
        for key in top:
            del old[key]
        for key in config:
            del old["config"][key]
        for key in spec:
            del old["spec"][key]
    return old


def same(a: object, b: object) -> bool:
    """Equal, tensors compared exactly, through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A conditional run trained as runs before the options were (2 steps), and the same run
    resumed from its current-shape checkpoint to 4 steps."""
    base = tmp_path_factory.mktemp("old")
    run = fit(tiny_config(base / "a", steps=2, conditional=True, ema=0.9, **OLD_RUN), progress=False)
    state = load_checkpoint(run / "checkpoint.pt")
    shutil.copytree(run, base / "b" / "run")
    resumed = fit(tiny_config(base / "b", steps=4), resume=True, progress=False)
    return run, state, load_checkpoint(resumed / "checkpoint.pt")


def write_old(old_run, tmp_path: Path, shape: int) -> Path:
    """A copy of the old run whose checkpoint has the given old shape; its directory."""
    run, state, _ = old_run
    target = tmp_path / "run"
    shutil.copytree(run, target)
    torch.save(old_shape(state, shape), target / "checkpoint.pt")
    return target


@pytest.mark.parametrize("shape", SHAPES)
def test_an_old_shape_loads_as_the_checkpoint_it_was_cut_from(old_run, tmp_path, shape):
    _, state, _ = old_run
    loaded = load_checkpoint(write_old(old_run, tmp_path, shape) / "checkpoint.pt")
    assert loaded["format"] == checkpoint.FORMAT
    # Every key back, with the value the run was trained with; nothing else changed.
    assert same(loaded, state)
    assert TrainConfig.from_dict(loaded["config"]) == TrainConfig.from_dict(state["config"])
    # Today's defaults for a new run differ: the upgrade, not they, decides an old run's values.
    if shape <= 1:  # it lacks d_depth
        assert loaded["config"]["d_depth"] == loaded["spec"]["d_depth"] == 2
        assert TrainConfig().d_depth == NetworkSpec().d_depth == 3
    if shape <= 2:  # and d_projection
        assert loaded["config"]["d_projection"] == loaded["spec"]["d_projection"] == "flat"
        assert TrainConfig().d_projection == NetworkSpec().d_projection == "pooled"


@pytest.mark.parametrize("shape", SHAPES)
def test_an_old_shape_resumes_bit_identical_to_its_current_shape(old_run, tmp_path, shape):
    _, _, reference = old_run
    write_old(old_run, tmp_path, shape)
    resumed = load_checkpoint(fit(tiny_config(tmp_path, steps=4), resume=True, progress=False)
                              / "checkpoint.pt")
    assert resumed["step"] == reference["step"] == 4
    for key in ("generator", "discriminator", "ema", "opt_g", "opt_d", "noise_rng", "spec"):
        assert same(resumed[key], reference[key]), key
    where = {"data", "out"}  # the resuming command's own paths
    assert same({k: v for k, v in resumed["config"].items() if k not in where},
                {k: v for k, v in reference["config"].items() if k not in where})
    assert resumed["resumed"] == reference["resumed"] == [None]


@pytest.mark.parametrize("shape", [0, len(ADDED)])
def test_an_old_shape_exports_the_generator_it_holds(old_run, tmp_path, shape):
    run, state, _ = old_run
    old = write_old(old_run, tmp_path, shape)
    G, _ = load_trained_generator(old)
    assert G.spec == NetworkSpec.from_dict(state["spec"])
    assert same(G.state_dict(), state["ema"])
    meta = json.loads((export(old, tmp_path / "models", "old") / "model.json").read_text())
    current = json.loads((export(run, tmp_path / "models", "new") / "model.json").read_text())
    assert meta["training"] == current["training"]
    assert meta["training"]["config"]["d_depth"] == 2 and meta["training"]["spec"]["d_classes"] is False


def test_the_oldest_shape_resumes_and_exports_from_the_command_line(old_run, tmp_path):
    old = write_old(old_run, tmp_path, 0)
    result = subprocess.run(
        [sys.executable, "-m", "train", "fit", "--resume", "--out", str(old), "--steps", "3",
         "--device", "cpu", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(old / "checkpoint.pt")
    assert state["step"] == 3 and state["spec"]["d_depth"] == 2 and len(state["resumed"]) == 1
    result = subprocess.run(
        [sys.executable, "-m", "train", "export", str(old), "--name", "old",
         "--models-dir", str(tmp_path / "models")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "old" / "1" / "model.onnx").is_file()


def test_upgrade_is_one_step_per_version_and_leaves_its_input_alone(old_run):
    _, state, _ = old_run
    old = old_shape(state, 0)
    kept = {**old, "config": dict(old["config"]), "spec": dict(old["spec"])}
    assert set(checkpoint._UPGRADES) == set(range(1, checkpoint.VERSION))
    new = upgrade(old)
    assert same(old, kept)  # a new dict: the checkpoint as read is not changed
    assert same(new, state)
    assert same(upgrade(new), new)  # the current version passes through


def test_a_newer_format_is_refused_in_one_line(old_run, tmp_path):
    run, state, _ = old_run
    target = tmp_path / "run"
    shutil.copytree(run, target)
    newer = checkpoint.VERSION + 1
    torch.save({**state, "format": f"gan-checkpoint/{newer}"}, target / "checkpoint.pt")
    with pytest.raises(TrainError, match=f"format {newer} is newer than this code reads"):
        load_checkpoint(target / "checkpoint.pt")
    for args in (["fit", "--resume", "--out", str(target), "--steps", "3"],
                 ["export", str(target), "--name", "m", "--models-dir", str(tmp_path / "models")]):
        result = subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and f"format {newer} is newer" in lines[0]


@pytest.mark.parametrize(("change", "text"), [
    (lambda s: s["config"].pop("class_margin"), r"'config': lacks 'class_margin'"),
    (lambda s: s["spec"].pop("d_depth"), r"'spec': lacks 'd_depth'"),
    (lambda s: s.pop("resumed"), r"lacks 'resumed'"),
    (lambda s: s["config"].update(future_option=1), r"'config': holds unknown 'future_option'"),
    (lambda s: s.update(format="gan-checkpoint/0"), "format 0 was never written"),
    (lambda s: s.update(format="other/2"), "not a checkpoint of this project"),
])
def test_a_current_checkpoint_missing_a_key_is_refused_naming_it(old_run, tmp_path, change, text):
    _, state, _ = old_run
    broken = {**state, "config": dict(state["config"]), "spec": dict(state["spec"])}
    change(broken)
    torch.save(broken, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainError, match=text):
        load_checkpoint(tmp_path / "checkpoint.pt")
