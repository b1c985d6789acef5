"""The models one worker serves, rescanned for new versions while it runs.

Every version on disk whose files pass ``read_spec`` is *servable*; the version policy
(GAN_VERSION_POLICY) decides which of them are *resident*: loaded into an onnxruntime session
at start and on every rescan. A request that pins a servable version outside the policy loads
it on demand into a small LRU cache (GAN_VERSION_CACHE versions across all models), so memory
is bounded by the policy plus the cache, not by the number of exports.

Threads: every request thread reads ``_snapshot`` (an immutable view, replaced whole) and the
cache dict without a lock. Rescans and on-demand loads hold ``_lock``, so only one of them runs
at a time and no version is ever loaded twice at once; they are the only writers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serve import metrics
from serve.config import Settings
from serve.errors import shown
from serve.model import OnnxGenerator, load_onnx_generator
from serve.repository import (
    ModelError,
    ModelVersion,
    RepositoryError,
    find_versions,
    fingerprint,
    read_spec,
)

log = logging.getLogger(__name__)

Models = dict[str, dict[int, OnnxGenerator]]
Specs = dict[str, dict[int, ModelVersion]]
Key = tuple[str, int]


class RegistryError(Exception):
    """A model or version a request asked for that this worker cannot serve, and why.

    The registry knows nothing of HTTP: serve/app.py maps each subclass to its status and
    error code. ``message`` is for the client: it names no local path.
    """

    @property
    def message(self) -> str:
        """What the client is told."""
        return str(self)


class UnknownModel(RegistryError):
    """No model of that name is served (``served``: the names that are, when known)."""

    def __init__(self, name: object, served: list[str] | None = None) -> None:
        listing = "" if served is None else f"; served: {', '.join(served)}"
        super().__init__(f"unknown model {shown(name)}{listing}")


class UnknownVersion(RegistryError):
    """The model has no such version (``versions``: its servable ones, when known)."""

    def __init__(self, name: object, version: object, versions: list[int] | None = None) -> None:
        listing = "" if versions is None else f"; versions: {versions}"
        super().__init__(f"model {shown(name)} has no version {shown(version)}{listing}")


class NotReady(RegistryError):
    """No model is loaded; ``detail`` says more (such as why the repository is unreadable)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"no model is loaded{detail}")


class VersionNotLoaded(RegistryError):
    """A version on disk outside the version policy, with on-demand loading off."""

    def __init__(self, name: str, version: int, policy: object, loaded: object) -> None:
        super().__init__(
            f"model {name!r} version {version} exists on disk but is not loaded by the version "
            f"policy {policy} (loaded: {loaded}), and loading versions on demand is off"
        )


class VersionUnavailable(RegistryError):
    """A version on disk that this worker refused: the client asked for nothing wrong."""

    def __init__(self, name: str, version: int, servable: list[int]) -> None:
        super().__init__(
            f"model {name!r} version {version} exists on disk but fails the service's checks, "
            f"so it cannot be served (the service log says why); servable versions: {servable}"
        )


@dataclass(frozen=True)
class _Snapshot:
    """What a worker serves at one moment; never mutated, replaced whole."""

    specs: Specs  # every servable version on disk, ascending
    resident: Models  # the policy's loaded versions; every model of ``specs`` has an entry
    defaults: dict[str, int]  # the version a request that names none gets
    default_name: str | None


@dataclass(frozen=True)
class Rejected:
    """A version on disk that fails the service's checks, and why."""

    name: str
    version: int
    reason: str


@dataclass(frozen=True)
class ModelView:
    """One model as this worker sees it, for ``/models``."""

    name: str
    specs: dict[int, ModelVersion]  # every servable version on disk, ascending
    default_version: int
    policy_versions: list[int]  # kept loaded by the version policy
    loaded_versions: list[int]  # with a session in this worker now: the policy's and cached


class Registry:
    """Servable versions by name, the policy's loaded ones, and the on-demand LRU cache.

    Bad versions are logged, reported by ``rejected`` (and /readyz) and skipped; the others
    are served. ``must_load`` (a worker of the service's start): a repository that cannot be
    read, or with nothing loadable, is a RepositoryError, which stops the start. Otherwise (a
    worker forked to replace another) the registry starts empty instead, not ready, and
    ``tick`` retries every second until the repository is back: a worker that cannot boot
    would make gunicorn stop the whole service, the healthy workers with it.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        must_load: bool = True,
    ) -> None:
        self.settings = settings
        self.policy = settings.version_policy
        self.clock = clock  # injectable so tests can step time instead of sleeping
        self._lock = threading.Lock()  # one rescan or on-demand load at a time
        self._rejected: dict[Path, tuple[int, ...]] = {}  # bad versions by fingerprint
        self._reasons: dict[Path, Rejected] = {}  # and why, for /readyz
        self.repository_error: str | None = None  # why the last scan failed; None: it worked
        self._snapshot = self._make_snapshot({}, {})
        # The on-demand cache: written under _lock only, read without it. Recency is a
        # counter stamped on each use (a lock-free dict write), looked at only to evict.
        self._cache: dict[Key, OnnxGenerator] = {}
        self._used: dict[Key, int] = {}
        self._ticks = itertools.count(1)
        self._published: set[tuple[str, int, str]] = set()  # in gan_model_versions_loaded

        try:
            found = find_versions(settings.models_dir)
        except RepositoryError as e:
            if must_load:
                raise
            found = {}
            self._unreadable(e)
        problems: list[str] = []
        specs = self._read_specs(found, {}, problems)
        resident = self._select(specs, {}, problems)
        self._snapshot = self._make_snapshot(specs, resident)
        self._scanned_at = clock()
        self._publish_loaded()
        if must_load:
            self._check_start(specs, problems)

    def _check_start(self, specs: Specs, problems: list[str]) -> None:
        """Stop the service's start when nothing can be served, or the default model is not."""
        models_dir = self.settings.models_dir
        if not self.ready:
            if problems:
                raise RepositoryError(
                    f"model repository {models_dir} has no servable version:\n  "
                    + "\n  ".join(problems)
                )
            listing = ", ".join(f"{n} {list(v)}" for n, v in specs.items())
            raise RepositoryError(
                f"GAN_VERSION_POLICY={self.policy} selects none of the versions in "
                f"{models_dir} ({listing})"
            )
        if self.settings.default_model is not None and self.settings.default_model not in specs:
            raise RepositoryError(
                f"GAN_DEFAULT_MODEL={self.settings.default_model} is not in the model "
                f"repository {models_dir} (it holds: {', '.join(specs)})"
            )

    # --- What is served -----------------------------------------------------------------

    @property
    def models(self) -> Models:
        """The policy's loaded versions of each model that has any."""
        return {name: gens for name, gens in self._snapshot.resident.items() if gens}

    @property
    def default_name(self) -> str | None:
        """GAN_DEFAULT_MODEL if set, else the alphabetically first model."""
        return self._snapshot.default_name

    @property
    def ready(self) -> bool:
        """Whether at least one version is loaded by the policy."""
        return any(self._snapshot.resident.values())

    @property
    def rejected(self) -> list[Rejected]:
        """The versions on disk this worker refused, and why (no local paths)."""
        return sorted(self._reasons.values(), key=lambda r: (r.name, r.version))

    def names(self) -> list[str]:
        """Every model with a servable version, by name."""
        return list(self._snapshot.specs)

    def describe(self) -> dict[str, ModelView]:
        """Every model's versions: on disk, kept by the policy, loaded in this worker now."""
        snap = self._snapshot
        cached = self._cache.copy()
        views = {}
        for name, specs in snap.specs.items():
            policy = list(snap.resident[name])
            extra = [v for (n, v) in cached if n == name and v not in snap.resident[name]]
            views[name] = ModelView(
                name=name,
                specs=specs,
                default_version=snap.defaults[name],
                policy_versions=policy,
                loaded_versions=sorted(policy + extra),
            )
        return views

    def resolve(self, name: str | None, version: int | None) -> OnnxGenerator:
        """The generator asked for: the default model and its default version unless named."""
        # The hot path: a loaded version of the policy is two or three dict lookups, no lock.
        snap = self._snapshot
        if name is None:
            name = snap.default_name
        versions = None if name is None else snap.resident.get(name)
        if versions is not None:
            assert name is not None
            if version is None:
                version = snap.defaults[name]
            generator = versions.get(version)
            if generator is not None:
                return generator
        return self._resolve_other(snap, name, version)

    def _resolve_other(self, snap: _Snapshot, name: str | None, version: int | None) -> OnnxGenerator:
        """A version outside the policy (from the cache or loaded now), or the right error."""
        spec = self._servable(snap, name, version)
        key = (spec.name, spec.version)
        generator = self._cache.get(key)
        if generator is not None:
            self._used[key] = next(self._ticks)
            return generator
        if self.settings.version_cache == 0:
            loaded = list(snap.resident[spec.name]) or "none"
            raise VersionNotLoaded(spec.name, spec.version, self.policy, loaded)
        return self._load_on_demand(spec)

    def _servable(self, snap: _Snapshot, name: str | None, version: int | None) -> ModelVersion:
        """The spec of a servable version, or the RegistryError that says why there is none."""
        if not snap.specs:
            raise NotReady()
        specs = None if name is None else snap.specs.get(name)
        if specs is None:
            raise UnknownModel(name, list(snap.specs))
        assert name is not None
        if version is None:
            version = snap.defaults[name]
        spec = specs.get(version)
        if spec is not None:
            return spec
        if self.settings.models_dir / name / str(version) in self._rejected:
            raise VersionUnavailable(name, version, list(specs))
        raise UnknownVersion(name, version, list(specs))

    def _load_on_demand(self, spec: ModelVersion) -> OnnxGenerator:
        """Load a servable version outside the policy into the LRU cache (one load at a time)."""
        key = (spec.name, spec.version)
        with self._lock:
            # A rescan or another thread may have loaded (or dropped) it while this one waited.
            snap = self._snapshot
            generator = snap.resident.get(spec.name, {}).get(spec.version) or self._cache.get(key)
            if generator is not None:
                return generator
            spec = self._servable(snap, spec.name, spec.version)
            try:
                generator = self._load(spec)
            except (ModelError, OSError) as e:
                log.error("cannot load a model version on demand: %s", e)
                self._reject(spec.path, e)
                specs = {n: dict(v) for n, v in snap.specs.items()}
                del specs[spec.name][spec.version]
                if not specs[spec.name]:
                    del specs[spec.name]
                self._snapshot = self._make_snapshot(specs, snap.resident)
                servable = list(specs.get(spec.name, {}))
                raise VersionUnavailable(spec.name, spec.version, servable) from None
            self._cache_put(key, generator)
            self._publish_loaded()
            log.info(
                "model %s version %d is outside the version policy: cached on demand "
                "(cache: %s)",
                spec.name,
                spec.version,
                ", ".join(f"{n}/{v}" for n, v in self._cache),
            )
            return generator

    # --- Rescans ------------------------------------------------------------------------

    def tick(self) -> bool:
        """Called by the worker about once a second between requests: rescan when due, and
        every second while nothing is loaded (GAN_RELOAD_INTERVAL=0 included), so a worker
        that started without its repository serves within a second or so of its return.
        Whether the worker is ready."""
        if self.ready:
            self.maybe_reload()
        elif self.clock() - self._scanned_at >= 1.0 and self._lock.acquire(blocking=False):
            try:
                self._reload()
            finally:
                self._lock.release()
        return self.ready

    def maybe_reload(self) -> None:
        """Rescan once GAN_RELOAD_INTERVAL seconds have passed since the last scan."""
        interval = self.settings.reload_interval
        if interval == 0 or self.clock() - self._scanned_at < interval:
            return
        # One rescan at a time is enough; other threads keep serving the current models.
        # Busy with an on-demand load: the next request rescans instead.
        if self._lock.acquire(blocking=False):
            try:
                self._reload()
            finally:
                self._lock.release()

    def reload(self) -> None:
        """Apply the policy to the versions on disk now: load the versions that join it, move
        those that leave it to the cache, drop removed ones. Bad new versions are skipped."""
        with self._lock:
            self._reload()

    def _reload(self) -> None:
        self._scanned_at = self.clock()
        try:
            # A repository that holds no model at all is taken for one that is not there (a
            # volume being remounted, a directory being replaced), not for the removal of
            # every model: the loaded versions stay until it holds models again.
            found = find_versions(self.settings.models_dir)
        except (RepositoryError, OSError) as e:
            metrics.MODEL_RELOADS.labels("failed").inc()
            self._unreadable(e)
            return
        if self.repository_error is not None:
            log.warning("the model repository %s can be read again", self.settings.models_dir)
            self.repository_error = None
        current = self._snapshot
        specs = self._read_specs(found, current.specs, None)
        resident = self._select(specs, current.resident, None)
        for name, versions in current.resident.items():
            for version, generator in versions.items():
                if version in resident.get(name, {}):
                    continue
                if version not in specs.get(name, {}):
                    log.warning("unloaded model %s version %d: its directory is gone", name, version)
                elif self.settings.version_cache:
                    self._cache_put((name, version), generator)  # before the switch: no gap
                    log.info("model %s version %d left the version policy: cached", name, version)
                else:
                    log.info("unloaded model %s version %d: not in the version policy", name, version)
        self._snapshot = self._make_snapshot(specs, resident)
        for name, version in list(self._cache):
            if version in resident.get(name, {}):
                self._cache_drop((name, version))  # back in the policy's set
            elif version not in specs.get(name, {}):
                self._cache_drop((name, version))
                log.warning("unloaded model %s version %d: its directory is gone", name, version)
        # Forget rejections of directories that are gone, so the memo stays bounded.
        paths = {path for versions in found.values() for path in versions.values()}
        self._rejected = {p: m for p, m in self._rejected.items() if p in paths}
        self._reasons = {p: r for p, r in self._reasons.items() if p in self._rejected}
        self._publish_loaded()
        metrics.MODEL_RELOADS.labels("ok").inc()

    def _read_specs(
        self, found: dict[str, dict[int, Path]], known: Specs, problems: list[str] | None
    ) -> Specs:
        """The servable versions of ``found``: known ones kept, new ones checked by read_spec.

        ``problems`` collects the errors at start; on a rescan (None) they are only logged.
        """
        specs: Specs = {}
        for name, versions in found.items():
            for version, path in versions.items():
                spec = known.get(name, {}).get(version)
                if spec is None:
                    spec = self._read_new(name, version, path, problems)
                if spec is not None:
                    specs.setdefault(name, {})[version] = spec
        return specs

    def _read_new(
        self, name: str, version: int, path: Path, problems: list[str] | None
    ) -> ModelVersion | None:
        try:
            if self._rejected.get(path) == fingerprint(path):
                return None  # unchanged since it was refused: not retried
            spec = read_spec(path, name, version)
        except (ModelError, OSError) as e:
            self._refuse(path, e, problems)
            return None
        self._rejected.pop(path, None)  # changed since, and now right (loading may refuse it)
        self._reasons.pop(path, None)
        return spec

    def _select(self, specs: Specs, current: Models, problems: list[str] | None) -> Models:
        """The policy's versions of each model, loaded (or reused from ``current`` and the
        cache). A version that fails to load is refused and removed from ``specs``; under
        ``latest:N`` the next lower version takes its place."""
        resident: Models = {}
        limit = self.policy.limit
        for name in list(specs):
            versions = specs[name]
            kept: dict[int, OnnxGenerator] = {}
            for version in self.policy.candidates(versions):
                if limit is not None and len(kept) == limit:
                    break
                generator = current.get(name, {}).get(version) or self._cache.get((name, version))
                if generator is None:
                    try:
                        generator = self._load(versions[version])
                    except (ModelError, OSError) as e:
                        self._refuse(versions[version].path, e, problems)
                        del versions[version]
                        continue
                kept[version] = generator
            if versions:
                resident[name] = dict(sorted(kept.items()))
            else:
                del specs[name]
        return resident

    def _make_snapshot(self, specs: Specs, resident: Models) -> _Snapshot:
        defaults = {
            # The highest version the policy keeps; a model it keeps none of (specific:...)
            # defaults to its highest version on disk, served through the cache.
            name: max(resident.get(name) or versions)
            for name, versions in specs.items()
        }
        default_name = self.settings.default_model
        if default_name is None:
            default_name = min(specs, default=None)
        return _Snapshot(
            specs=specs,
            resident={name: resident.get(name, {}) for name in specs},
            defaults=defaults,
            default_name=default_name,
        )

    # --- Loading, refusing, caching -----------------------------------------------------

    def _load(self, spec: ModelVersion) -> OnnxGenerator:
        settings = self.settings
        generator = load_onnx_generator(spec, settings.threads, settings.batching, settings.providers)
        metrics.MODEL_LOADS.labels(spec.name).inc()
        log.info("loaded model %s version %d", spec.name, spec.version)
        return generator

    def _unreadable(self, error: Exception) -> None:
        """A scan failed: log it once per distinct error, not at every retry."""
        message = str(error)
        if message != self.repository_error:
            action = "keeping the loaded models" if self.ready else "nothing is loaded"
            log.error("cannot read the model repository (%s), retrying: %s", action, message)
        self.repository_error = message

    def _refuse(self, path: Path, error: Exception, problems: list[str] | None) -> None:
        self._reject(path, error)
        if problems is None:
            log.error("not loading a new model version, keeping the others: %s", error)
        else:
            problems.append(str(error))
            log.error("not serving a model version, serving the others: %s", error)

    def _reject(self, path: Path, error: Exception) -> None:
        """Remember a bad version so it is retried only once its files change."""
        metrics.VERSIONS_REJECTED.labels(path.parent.name).inc()
        try:
            self._rejected[path] = fingerprint(path)
        except OSError:
            return  # already gone: nothing to remember
        name, version = path.parent.name, int(path.name)
        # The reason as the log gives it, with the version's local path replaced by its name.
        reason = str(error).replace(f"{path}: ", "").replace(str(path), f"{name}/{version}")
        self._reasons[path] = Rejected(name, version, reason)

    def _cache_put(self, key: Key, generator: OnnxGenerator) -> None:
        """Add to the cache as the most recently used, evicting the least recently used."""
        self._cache[key] = generator
        self._used[key] = next(self._ticks)
        while len(self._cache) > self.settings.version_cache:
            victim = min(self._cache, key=lambda k: self._used.get(k, 0))
            self._cache_drop(victim)
            log.info("evicted model %s version %d from the on-demand cache", *victim)
        for stale in self._used.keys() - self._cache.keys():  # stamped just as it was dropped
            self._used.pop(stale, None)

    def _cache_drop(self, key: Key) -> None:
        self._cache.pop(key, None)
        self._used.pop(key, None)

    def _publish_loaded(self) -> None:
        """Set gan_model_versions_loaded to the versions with a session here: policy and cache."""
        generators = [g for versions in self._snapshot.resident.values() for g in versions.values()]
        generators += self._cache.values()
        loaded = {(g.spec.name, g.spec.version, g.spec.sha256) for g in generators}
        metrics.set_loaded(loaded, self._published)
        self._published = loaded

