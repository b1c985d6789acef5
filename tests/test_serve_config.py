"""Settings from GAN_ variables: defaults, CPU budget, and clear errors for bad values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import serve
from serve import config
from serve.app import create_app
from serve.config import VARIABLES, ConfigError, load_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "serving.md"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "cpu_count", lambda: 6)
    settings = load_settings({})
    assert settings.models_dir == Path(serve.__file__).resolve().parent.parent / "models"
    assert settings.bind == "127.0.0.1:8000"
    assert (settings.workers, settings.threads) == (6, 1)
    assert settings.max_samples == 64
    assert settings.max_body_bytes == 1024 * 1024
    assert (settings.timeout, settings.graceful_timeout) == (30, 30)
    assert settings.reload_interval == 5
    assert settings.log_level == "info"
    assert settings.default_model is None
    assert str(settings.version_policy) == "latest:1"
    assert settings.version_cache == 2
    assert (settings.access_log, settings.batching) == (True, True)
    assert (settings.keepalive, settings.client_timeout) == (5, 10)
    assert (settings.log_format, settings.metrics_dir) == ("json", None)


def test_values_are_read(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "GAN_MODELS_DIR": str(tmp_path),
            "GAN_BIND": "0.0.0.0:9000",
            "GAN_WORKERS": "1",
            "GAN_MAX_SAMPLES": "8",
            "GAN_MAX_BODY_BYTES": "1000",
            "GAN_TIMEOUT": "10",
            "GAN_GRACEFUL_TIMEOUT": "0",
            "GAN_RELOAD_INTERVAL": "0",
            "GAN_LOG_LEVEL": "DEBUG",
            "GAN_DEFAULT_MODEL": "mnist-dcgan",
            "GAN_VERSION_POLICY": "specific:4,2",
            "GAN_VERSION_CACHE": "0",
            "GAN_ACCESS_LOG": "off",
            "GAN_BATCHING": "OFF",
            "GAN_KEEPALIVE": "0",
            "GAN_CLIENT_TIMEOUT": "3",
            "GAN_LOG_FORMAT": "Text",
            "GAN_METRICS_DIR": str(tmp_path / "metrics"),
        }
    )
    assert settings.models_dir == tmp_path
    assert settings.bind == "0.0.0.0:9000"
    assert settings.workers == 1
    assert (settings.max_samples, settings.max_body_bytes) == (8, 1000)
    assert (settings.timeout, settings.graceful_timeout, settings.reload_interval) == (10, 0, 0)
    assert settings.log_level == "debug"
    assert settings.default_model == "mnist-dcgan"
    assert str(settings.version_policy) == "specific:2,4"
    assert settings.version_cache == 0
    assert (settings.access_log, settings.batching) == (False, False)
    assert (settings.keepalive, settings.client_timeout) == (0, 3)
    assert (settings.log_format, settings.metrics_dir) == ("text", tmp_path / "metrics")


def test_default_workers_fill_the_cpus_with_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "cpu_count", lambda: 8)
    settings = load_settings({"GAN_THREADS": "2"})
    assert (settings.workers, settings.threads) == (4, 2)
    assert load_settings({"GAN_THREADS": "3"}).workers == 2


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GAN_WORKERS": "3", "GAN_THREADS": "3"}, "3 x 3 = 9 exceeds the 8 CPUs"),
        ({"GAN_WORKERS": "9"}, "9 x 1 = 9 exceeds the 8 CPUs"),
        ({"GAN_THREADS": "9"}, "GAN_THREADS=9 exceeds the 8 CPUs"),
    ],
)
def test_more_threads_than_cpus_is_an_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    monkeypatch.setattr(config, "cpu_count", lambda: 8)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_settings(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GAN_WORKERS", "two"),
        ("GAN_WORKERS", "0"),
        ("GAN_WORKERS", "-1"),
        ("GAN_WORKERS", "1.5"),
        ("GAN_WORKERS", ""),
        ("GAN_THREADS", "0"),
        ("GAN_MAX_SAMPLES", "0"),
        ("GAN_MAX_SAMPLES", "1e3"),
        ("GAN_MAX_BODY_BYTES", "1MiB"),
        ("GAN_TIMEOUT", "0"),
        ("GAN_GRACEFUL_TIMEOUT", "-5"),
        ("GAN_RELOAD_INTERVAL", "-1"),
        ("GAN_RELOAD_INTERVAL", "0.5"),
        ("GAN_LOG_LEVEL", "loud"),
        ("GAN_DEFAULT_MODEL", "My Model"),
        ("GAN_MODELS_DIR", " "),
        ("GAN_BIND", ""),
        ("GAN_VERSION_POLICY", "newest"),
        ("GAN_VERSION_POLICY", "latest:0"),
        ("GAN_VERSION_POLICY", "specific:"),
        ("GAN_VERSION_CACHE", "-1"),
        ("GAN_VERSION_CACHE", "two"),
        ("GAN_LOG_FORMAT", "xml"),
        ("GAN_LOG_FORMAT", ""),
        ("GAN_METRICS_DIR", " "),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_unknown_gan_variable_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serve"):
        load_settings({"GAN_WORKER": "2"})
    assert "GAN_WORKER" in caplog.text


def test_create_app_refuses_unknown_settings(models_dir: Path) -> None:
    with pytest.raises(ConfigError, match="GAN_MODEL_DIR"):
        create_app({"GAN_MODEL_DIR": str(models_dir)})


def test_create_app_takes_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    monkeypatch.setenv("GAN_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("GAN_MAX_BODY_BYTES", "123")
    app = create_app()
    assert app.config["MAX_CONTENT_LENGTH"] == 123
    assert app.extensions["gan"].settings.models_dir == models_dir


def test_every_variable_is_documented() -> None:
    text = DOCS.read_text()
    missing = [name for name in VARIABLES if f"`{name}`" not in text]
    assert not missing, f"docs/serving.md does not document {missing}"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GAN_ACCESS_LOG": "yes"}, "GAN_ACCESS_LOG must be on or off, got 'yes'"),
        ({"GAN_BATCHING": ""}, "GAN_BATCHING must be on or off"),
        ({"GAN_KEEPALIVE": "-1"}, "GAN_KEEPALIVE must be an integer >= 0"),
        ({"GAN_CLIENT_TIMEOUT": "0"}, "GAN_CLIENT_TIMEOUT must be an integer >= 1"),
    ],
)
def test_bad_connection_and_inference_settings(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env)


@pytest.mark.parametrize(
    ("raw", "providers"),
    [
        ("cpu", ("CPUExecutionProvider",)),
        ("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider")),
        (" CUDA , cpu ", ("CUDAExecutionProvider", "CPUExecutionProvider")),
        ("TensorrtExecutionProvider,cuda", ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                            "CPUExecutionProvider")),
    ],
)
def test_providers(raw: str, providers: tuple[str, ...]) -> None:
    assert load_settings({"GAN_PROVIDERS": raw}).providers == providers


def test_providers_default_to_the_cpu() -> None:
    assert load_settings({}).providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "comma-separated list"),
        ("cuda,", "comma-separated list"),
        ("gpu", "unknown provider 'gpu'"),
        ("cuda,cuda", "names CUDAExecutionProvider twice"),
        ("cpu,cuda", "cpu must come last"),
    ],
)
def test_bad_providers(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings({"GAN_PROVIDERS": raw})


def test_a_provider_this_onnxruntime_lacks_stops_the_app(models_dir: Path) -> None:
    with pytest.raises(ConfigError, match="CUDAExecutionProvider, which this onnxruntime"):
        create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_PROVIDERS": "cuda"})
