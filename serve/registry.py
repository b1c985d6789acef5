"""The models one worker serves, rescanned for new versions while it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serve.config import Settings
from serve.errors import ApiError
from serve.model import Generator, load_generator
from serve.repository import ModelError, RepositoryError, find_versions, fingerprint, read_spec, scan

log = logging.getLogger(__name__)

Models = dict[str, dict[int, Generator]]


class Registry:
    """Loaded versions by name; ``models`` is replaced whole on reload, never mutated.

    ``strict``: any bad version is a RepositoryError (the service's start). Otherwise bad
    versions are logged and skipped, and only a repository with nothing loadable is an error.
    """

    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.monotonic, strict: bool = True
    ) -> None:
        self.settings = settings
        self.clock = clock  # injectable so tests can step time instead of sleeping
        self._lock = threading.Lock()
        self._rejected: dict[Path, tuple[int, ...]] = {}
        models: Models = {}
        problems: list[str] = []
        for name, versions in find_versions(settings.models_dir).items():
            for version, path in versions.items():
                try:
                    models.setdefault(name, {})[version] = self._load(name, version, path)
                except (ModelError, OSError) as e:
                    self._reject(path)
                    problems.append(str(e))
                    log.error("not loading a model version: %s", e)
        if problems and (strict or not models):
            raise RepositoryError(
                f"model repository {settings.models_dir} is invalid:\n  " + "\n  ".join(problems)
            )
        if settings.default_model is not None and settings.default_model not in models:
            raise RepositoryError(
                f"GAN_DEFAULT_MODEL={settings.default_model} is not in the model repository "
                f"{settings.models_dir} (it holds: {', '.join(models)})"
            )
        self.models = models
        self._scanned_at = clock()

    @property
    def default_name(self) -> str | None:
        """GAN_DEFAULT_MODEL if set, else the alphabetically first model."""
        if self.settings.default_model is not None:
            return self.settings.default_model
        return min(self.models, default=None)

    def resolve(self, name: str | None, version: int | None) -> Generator:
        """The generator asked for: the default model and its highest version unless named."""
        models = self.models
        if not models:
            raise ApiError(503, "not_ready", "no model is loaded")
        name = self.default_name if name is None else name
        if name not in models:
            raise ApiError(
                404, "unknown_model", f"unknown model {name!r}; served: {', '.join(models)}"
            )
        versions = models[name]
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ApiError(
                404,
                "unknown_version",
                f"model {name!r} has no version {version}; versions: {list(versions)}",
            )
        return versions[version]

    def maybe_reload(self) -> None:
        """Rescan once GAN_RELOAD_INTERVAL seconds have passed since the last scan."""
        interval = self.settings.reload_interval
        if interval == 0 or self.clock() - self._scanned_at < interval:
            return
        # One rescan at a time is enough; other threads keep serving the current models.
        if self._lock.acquire(blocking=False):
            try:
                self.reload()
            finally:
                self._lock.release()

    def reload(self) -> None:
        """Load new versions and drop removed ones; a bad new version is logged and skipped."""
        self._scanned_at = self.clock()
        try:
            found = scan(self.settings.models_dir)
        except RepositoryError as e:
            log.error("reload skipped, keeping the loaded models: %s", e)
            return
        current = self.models
        updated: Models = {}
        for name, versions in found.items():
            for version, path in versions.items():
                generator = current.get(name, {}).get(version) or self._load_new(
                    name, version, path
                )
                if generator is not None:
                    updated.setdefault(name, {})[version] = generator
        for name, versions in current.items():
            for version in versions.keys() - updated.get(name, {}).keys():
                log.warning("unloaded model %s version %d: its directory is gone", name, version)
        self.models = updated
        # Forget rejections of directories that are gone, so the memo stays bounded.
        paths = {path for versions in found.values() for path in versions.values()}
        self._rejected = {p: m for p, m in self._rejected.items() if p in paths}

    def _load(self, name: str, version: int, path: Path) -> Generator:
        generator = load_generator(read_spec(path, name, version), self.settings.threads)
        log.info("loaded model %s version %d", name, version)
        return generator

    def _reject(self, path: Path) -> None:
        """Remember a bad version so it is retried only once its files change."""
        try:
            self._rejected[path] = fingerprint(path)
        except OSError:
            pass  # already gone: nothing to remember

    def _load_new(self, name: str, version: int, path: Path) -> Generator | None:
        """Load a version seen for the first time (or changed since it was rejected)."""
        try:
            if self._rejected.get(path) == fingerprint(path):
                return None
            return self._load(name, version, path)
        except (ModelError, OSError) as e:
            self._reject(path)
            log.error("not loading a new model version, keeping the others: %s", e)
            return None
