"""A loaded model version: its onnxruntime session, checked against model.json, and inference."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort

from serve.repository import ModelError, ModelSpec

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


class Generator:
    """One model version and its session; runs one sample per call so images never depend on n."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession) -> None:
        self.spec = spec
        self.session = session

    def generate(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Images for noise ``z`` [n, d] (and ``labels`` [n]): float32 [n, C, H, W]."""
        # onnxruntime may pick different kernels for different batch sizes, which changes
        # the last bits; batch 1 makes each sample's output independent of the request.
        out = np.empty((len(z), *self.spec.image_shape), dtype=np.float32)
        for i in range(len(z)):
            feeds = {"z": np.ascontiguousarray(z[i : i + 1], dtype=np.float32)}
            if labels is not None:
                feeds["labels"] = np.ascontiguousarray(labels[i : i + 1], dtype=np.int64)
            out[i] = self.session.run(["images"], feeds)[0][0]
        return out


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a worker's session: ``threads`` intra-op threads, no inter-op parallelism."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    # Idle spinning threads would steal CPU from the other workers on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_generator(spec: ModelSpec, threads: int) -> Generator:
    """Create the session from the bytes whose sha256 was checked and compare its I/O to the spec."""
    data = spec.onnx_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise ModelError(f"{spec.path}: sha256 of model.onnx changed to {actual} while loading")
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"{spec.path}: onnxruntime cannot load model.onnx: {e}") from None
    check_io(spec, session)
    generator = Generator(spec, session)
    probe(generator)
    return generator


def probe(generator: Generator) -> None:
    """Run one sample, so a model that fails or returns another shape is refused at load."""
    spec = generator.spec
    feeds = {"z": np.zeros((1, spec.latent_size), dtype=np.float32)}
    if spec.conditional:
        feeds["labels"] = np.zeros(1, dtype=np.int64)
    try:
        out = generator.session.run(["images"], feeds)[0]
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"{spec.path}: model.onnx fails on one sample: {e}") from None
    if out.shape != (1, *spec.image_shape) or out.dtype != np.float32:
        raise ModelError(
            f"{spec.path}: model.onnx returns {out.dtype} images of shape {list(out.shape)}, "
            f"model.json says float32 {['n', *spec.image_shape]}"
        )


def _describe(args: list[ort.NodeArg]) -> list[tuple[str, str, list[object]]]:
    return [(a.name, a.type, list(a.shape)) for a in args]


def _dim_matches(got: object, want: object) -> bool:
    """A symbolic dim in model.json must be dynamic in the graph; a static one must be equal,
    or left unknown by the exporter (then the probe run checks it)."""
    if isinstance(want, str):
        return not isinstance(got, int)
    return got == want or not isinstance(got, int)


def _matches(arg: ort.NodeArg, entry: dict[str, object]) -> bool:
    """Same name, element type, rank and dims."""
    shape = entry["shape"]
    assert isinstance(shape, list)
    return (
        arg.name == entry["name"]
        and arg.type == _ORT_TYPES.get(str(entry["dtype"]))
        and len(arg.shape) == len(shape)
        and all(_dim_matches(g, w) for g, w in zip(arg.shape, shape, strict=True))
    )


def check_io(spec: ModelSpec, session: ort.InferenceSession) -> None:
    """Raise ModelError unless the session's inputs and output are what model.json says."""
    inputs, output = spec.meta["inputs"], spec.meta["output"]
    got_in, got_out = session.get_inputs(), session.get_outputs()
    by_name = {a.name: a for a in got_in}
    ok = (
        len(got_in) == len(inputs)
        and all(e["name"] in by_name and _matches(by_name[e["name"]], e) for e in inputs)
        and len(got_out) == 1
        and _matches(got_out[0], output)
    )
    if not ok:
        raise ModelError(
            f"{spec.path}: model.onnx does not match model.json: the session has inputs "
            f"{_describe(got_in)} and outputs {_describe(got_out)}, model.json says inputs "
            f"{spec.meta['inputs']} and output {output}"
        )
