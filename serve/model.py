"""A loaded model version: its onnxruntime session, checked against model.json, and inference."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging

import numpy as np
import onnxruntime as ort

from serve import latent
from serve.config import ConfigError
from serve.repository import ModelError, ModelVersion

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}
# The seeds whose images decide whether a batch size may run as one batch (see OnnxGenerator).
PROBE_SEED = 2**62
# Larger requests run in batches of at most this many samples: per image, batch 16 is as fast
# as batch 64 on the shipped models (about 0.29 ms against 0.39 ms at batch 1, on one
# thread), and its activations need a quarter of the memory.
MAX_BATCH = 16
log = logging.getLogger(__name__)


class OnnxGenerator:
    """One model version and its session, run so that a sample's image never depends on n.

    onnxruntime's kernels could in principle compute a sample differently inside a batch of
    another size (other tiling, other summation order), which changes the last bits and can
    move a rounded pixel. So a request runs in batches of up to MAX_BATCH samples, and a
    batch size is used only once it has been checked for this session: the first time size
    b is needed, the probe seeds run as one batch of b and one by one, and b is batched only
    if every output bit agrees. Otherwise (or with batching off) it runs one sample per call.
    """

    def __init__(self, spec: ModelVersion, session: ort.InferenceSession, batching: bool = True) -> None:
        self.spec = spec
        self.session = session
        self.batching = batching
        # The execution providers the session runs on (GAN_PROVIDERS): the bytes depend on them.
        self.providers = tuple(session.get_providers())
        # batch size -> whether it gives the same bits as batch 1; at most MAX_BATCH entries.
        self.batch_verdicts: dict[int, bool] = {1: True}

    def generate(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Images for noise ``z`` [n, d] (and ``labels`` [n]): float32 [n, C, H, W]."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.int64)
        if not self.batching or len(z) == 1:
            return self._run_one_by_one(z, labels)
        parts = []
        for start in range(0, len(z), MAX_BATCH):
            zs = z[start : start + MAX_BATCH]
            ls = None if labels is None else labels[start : start + MAX_BATCH]
            run = self._run if self._batch_matches(len(zs)) else self._run_one_by_one
            parts.append(run(zs, ls))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
        return self.session.run(["images"], feeds)[0]

    def _run_one_by_one(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        out = np.empty((len(z), *self.spec.image_shape), dtype=np.float32)
        for i in range(len(z)):
            out[i] = self._run(z[i : i + 1], None if labels is None else labels[i : i + 1])[0]
        return out

    def _batch_matches(self, n: int) -> bool:
        """Whether batch size ``n`` gives bit-identical outputs to batch 1 (checked once)."""
        verdict = self.batch_verdicts.get(n)
        if verdict is None:
            seeds = range(PROBE_SEED, PROBE_SEED + n)
            z = latent.noise_for_seeds(seeds, self.spec.latent_size)
            labels = None
            if self.spec.classes is not None:
                labels = latent.labels_for_seeds(seeds, len(self.spec.classes))
            batched = self._run(z, labels).view(np.uint32)
            verdict = bool(np.array_equal(batched, self._run_one_by_one(z, labels).view(np.uint32)))
            if not verdict:
                log.warning(
                    "model %s version %d: batch size %d differs from batch 1 in the last bits; "
                    "running it one sample at a time", self.spec.name, self.spec.version, n,
                )
            self.batch_verdicts[n] = verdict
        return verdict


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a worker's session: ``threads`` intra-op threads, no inter-op parallelism."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    # Idle spinning threads would steal CPU from the other workers on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Each session's arena would keep its own high-water mark of activations (and round it up
    # to a power of two); without it every session allocates from the one process heap, which
    # tune_malloc() keeps from shrinking and regrowing between runs.
    options.enable_cpu_mem_arena = False
    return options


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def tune_malloc() -> None:
    """Keep freed heap memory for reuse: glibc would otherwise return and refault it each run."""
    # Without onnxruntime's arena, a batch's activations (megabytes) are malloc'ed and freed
    # on every run; glibc's default thresholds then mmap/munmap or trim them each time, which
    # costs about 13% at batch 64. Fixed thresholds keep them in the heap (RSS stays at the
    # high-water mark of one run, shared by every session of the process).
    libc = _libc()
    if libc is None:  # not glibc: its allocator has no such knobs
        log.debug("mallopt is not available; leaving the allocator's defaults")
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (after loading models, not per request)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


CPU_ONLY = ("CPUExecutionProvider",)


def check_providers(providers: tuple[str, ...]) -> None:
    """Refuse execution providers this onnxruntime build does not have (GAN_PROVIDERS)."""
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(
            f"GAN_PROVIDERS asks for {', '.join(missing)}, which this onnxruntime "
            f"{ort.__version__} does not have (it has: {', '.join(available)}); CUDA needs the "
            "onnxruntime-gpu package in place of onnxruntime, and the GPU's libraries"
        )


def load_onnx_generator(
    spec: ModelVersion, threads: int, batching: bool = True, providers: tuple[str, ...] = CPU_ONLY
) -> OnnxGenerator:
    """Create the session from the bytes whose sha256 was checked and compare its I/O to the spec."""
    data = spec.onnx_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise ModelError(f"{spec.path}: sha256 of model.onnx changed to {actual} while loading")
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads), providers=list(providers)
        )
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"{spec.path}: onnxruntime cannot load model.onnx: {e}") from None
    del data  # the session holds its own copy of the weights
    if session.get_providers()[0] != providers[0]:
        # onnxruntime falls back to the next provider when one fails to start (a missing CUDA
        # library, no GPU), saying so only in its log: serving on another is refused.
        raise ModelError(
            f"{spec.path}: onnxruntime could not start {providers[0]} for model.onnx (it "
            f"runs on {', '.join(session.get_providers())}); its log above says why"
        )
    check_io(spec, session)
    generator = OnnxGenerator(spec, session, batching)
    probe(generator)
    release_free_memory()  # parsing the graph leaves a few MB of freed heap behind
    return generator


def probe(generator: OnnxGenerator) -> None:
    """Run one sample, so a model that fails or returns another shape is refused at load."""
    spec = generator.spec
    feeds: dict[str, np.ndarray] = {"z": np.zeros((1, spec.latent_size), dtype=np.float32)}
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


def check_io(spec: ModelVersion, session: ort.InferenceSession) -> None:
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
