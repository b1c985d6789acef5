"""The baseline for bench/peers.py: the plain Flask app a user would write around one model.onnx.

    export PLAIN_MODEL=$PWD/models/mnist-dcgan/7/model.onnx   # absolute: --chdir moves to bench/
    gunicorn -w 2 -b 127.0.0.1:8100 --chdir bench plain_server:app

(bench/peers.py adds ``--no-control-socket``: gunicorn's default control socket is one path per
user, which two instances on a host would fight over.)

``GET /generate?seed=S&n=N`` runs the batch of seeds S .. S+N-1 through onnxruntime in one call
and returns one PNG (a grid for N > 1); ``GET /hello`` is the HTTP ceiling. A conditional model
draws seed s from class s % PLAIN_CLASSES (default 10). Pixels and PNG come from numpy and
Pillow directly, as a user would write them; no validation, no other features.
"""

import functools
import io
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, Response, request
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's serve/ package
from serve import imaging, latent  # noqa: E402  # the noise spec and the grid layout only

app = Flask(__name__)


@functools.cache
def session() -> ort.InferenceSession:
    """This worker's session, made on first use (after gunicorn forked the worker)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(os.environ["PLAIN_MODEL"], options, providers=["CPUExecutionProvider"])


@app.get("/hello")
def hello() -> str:
    """A tiny text body."""
    return "hello"


@app.get("/generate")
def generate() -> Response:
    """One PNG of the images of seeds seed .. seed+n-1, from one batched onnxruntime call."""
    seed, n = int(request.args["seed"]), int(request.args.get("n", 1))
    seeds = range(seed, seed + n)
    inputs = {i.name: i for i in session().get_inputs()}
    feeds = {"z": latent.noise_for_seeds(seeds, inputs["z"].shape[1])}
    if "labels" in inputs:
        feeds["labels"] = np.array(seeds, dtype=np.int64) % int(os.environ.get("PLAIN_CLASSES", "10"))
    images = session().run(None, feeds)[0]
    tiles = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    grid = imaging.grid(tiles)
    buffer = io.BytesIO()
    Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buffer, format="PNG")
    return Response(buffer.getvalue(), mimetype="image/png")
