"""The Kubernetes and KServe manifests in deploy/, checked offline against schemas and the code.

Schemas: every Kubernetes object, as ``kubectl apply -k`` would send it, against the API
schemas that kubernetes-validate bundles (strict: an unknown field fails), for the oldest
Kubernetes release the manifests claim and the newest the pinned package knows; the KServe
InferenceService against deploy/kserve/inferenceservice.schema.json, its pod spec against
Kubernetes' Pod schema. The code: every probe path is a GET route of ``create_app(...)``'s
URL map that answers 200 without a token, every ``GAN_`` variable is one ``serve.config``
knows and its value parses with ``load_settings``, the container port is GAN_BIND's, the CPU
limit is GAN_WORKERS x GAN_THREADS, the grace period outlasts the preStop sleep and
GAN_GRACEFUL_TIMEOUT, and the security context runs the Dockerfile's USER, read-only.

No kubectl or kustomize: ``build`` below applies the few kustomize features the manifests use
(resources, RFC 6902 patches, images) and refuses any other, so a new one fails here first.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from flask import Flask
from helpers.tiny_models import write_repository
from werkzeug.exceptions import HTTPException

from serve import config
from serve.app import create_app
from serve.auth import exempt_paths
from serve.config import VARIABLES, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = (KUBERNETES, KUBERNETES / "models-volume")
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = ROOT / "deploy" / "kserve" / "inferenceservice.schema.json"
DOCKERFILE = ROOT / "Dockerfile"

# The oldest Kubernetes release the manifests are for (the preStop exec, autoscaling/v2 and
# policy/v1 are older), and the newest that the pinned kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Memory budget per process, from the measured figures (bench/README.md, docs/serving.md): a
# worker with one version of each shipped model tops out at 97-101 MiB RSS (57-66 MiB PSS),
# the gunicorn master at about 53 MiB RSS. A HUP runs a second set of workers for a moment.
WORKER_MIB = 100
MASTER_MIB = 55
# The startup probe waits at least this long for the master's repository check and every
# worker's sessions (0.4 s measured on the shipped models; a slow volume takes longer).
STARTUP_BUDGET_S = 60
# Variables the manifests may set that are not the service's: KServe's protocol of a custom
# container.
FOREIGN_VARIABLES = {"PROTOCOL"}
# Knative takes only these fields of a container (its ContainerMask): no startupProbe, no
# lifecycle hooks.
KNATIVE_CONTAINER_FIELDS = {
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
    "livenessProbe", "ports", "readinessProbe", "resources", "securityContext",
    "terminationMessagePath", "terminationMessagePolicy", "volumeMounts",
}  # fmt: skip
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}
# The KServe predictor's own fields beside the inlined PodSpec (ComponentExtensionSpec).
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy",
}  # fmt: skip


# --- A minimal kustomize: the features the manifests use, nothing else ------------------------
def load_yaml(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file, empty ones dropped."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902's add, replace and test on a copy of ``document``; a failed test raises."""
    result = copy.deepcopy(document)
    for op in operations:
        *parents, last = _pointer(op["path"])
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = last
        if isinstance(target, list) and not (op["op"] == "add" and last == "-"):
            key = int(last)
        if op["op"] == "test":
            if target[key] != op["value"]:
                raise ValueError(f"patch test failed at {op['path']}: {target[key]!r}")
        elif op["op"] == "replace":
            _ = target[key]  # replace needs an existing member (KeyError, IndexError)
            target[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(target, list):
                target.insert(len(target) if key == "-" else key, copy.deepcopy(op["value"]))
            else:
                target[key] = copy.deepcopy(op["value"])
        else:
            raise ValueError(f"patch operation {op['op']!r} is not handled here")
    return result


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(wanted[field] == value for field, value in target.items())


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` gives, for the features used in deploy/."""
    kustomization = load_yaml(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}: kustomization fields this test cannot apply: {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        objects += build(path) if path.is_dir() else load_yaml(path)
    for patch in kustomization.get("patches", []):
        operations = load_yaml(directory / patch["path"])[0]
        assert isinstance(operations, list), f"{patch['path']}: only RFC 6902 patches are handled"
        hits = [i for i, obj in enumerate(objects) if _matches(obj, patch["target"])]
        assert hits, f"{patch['path']}: no object matches {patch['target']}"
        for i in hits:
            objects[i] = apply_json_patch(objects[i], operations)
    for image in kustomization.get("images", []):
        for container in containers_of(objects):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def containers_of(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every container of the Deployments among ``objects``."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield from obj["spec"]["template"]["spec"]["containers"]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only object of ``kind``."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- The code's side: settings, routes, the image ---------------------------------------------
def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity (``2``, ``1500m``) in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``, ``536870912``) in MiB."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"([0-9.]+)([KMG]i?)?", quantity)
    assert match, f"memory quantity {quantity!r} is not one this test reads"
    return float(match[1]) * units.get(match[2] or "", 1) / 2**20


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment variables (valueFrom ones have no value here)."""
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def dockerfile_env() -> dict[str, str]:
    """The ``ENV name=value`` pairs of the Dockerfile."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            pairs.update(item.split("=", 1) for item in line[4:].split())
    return pairs


def dockerfile_user() -> tuple[int, int]:
    """The numeric ``USER uid:gid`` the image runs as."""
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert len(users) == 1, "the Dockerfile has one numeric USER uid:gid"
    return int(users[0][0]), int(users[0][1])


def settings_for(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, str]]:
    """The service's settings in ``container``: the image's ENV, then the container's ``GAN_``
    variables, parsed by the service itself with the CPUs the pod gets (its CPU limit)."""
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(config.PREFIX)}
    env |= {k: v for k, v in env_of(container).items() if k not in FOREIGN_VARIABLES}
    limit = cpus(container["resources"]["limits"]["cpu"])
    monkeypatch.setattr(config, "cpu_count", lambda: int(limit))
    return load_settings(env), env


def check_container(container: dict[str, Any], settings: Settings) -> list[str]:
    """What in a container disagrees with the service's settings and the image; empty: nothing."""
    problems = []
    for name in env_of(container):
        if name not in VARIABLES and name not in FOREIGN_VARIABLES:
            problems.append(f"{name} is not a setting of the service")
    ports = container.get("ports", [])
    bind_host, _, bind_port = settings.bind.rpartition(":")
    if bind_host not in ("0.0.0.0", "[::]"):
        problems.append(f"GAN_BIND {settings.bind} is not reachable from outside the pod")
    if [p["containerPort"] for p in ports] != [int(bind_port)]:
        problems.append(f"container ports {ports} are not GAN_BIND's {bind_port}")
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    if cpus(limits["cpu"]) != settings.workers * settings.threads:
        problems.append(
            f"CPU limit {limits['cpu']} is not GAN_WORKERS x GAN_THREADS = "
            f"{settings.workers} x {settings.threads}"
        )
    if cpus(requests["cpu"]) != cpus(limits["cpu"]):
        problems.append("CPU request differs from the limit: the workers would share fewer cores")
    budget = 2 * settings.workers * WORKER_MIB + MASTER_MIB
    if mebibytes(limits["memory"]) < budget:
        problems.append(f"memory limit {limits['memory']} is below {budget} MiB for the workers")
    uid, gid = dockerfile_user()
    security = container.get("securityContext", {})
    expected = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    for field, value in expected.items():
        if security.get(field) != value:
            problems.append(f"securityContext.{field} is {security.get(field)!r}, not {value!r}")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("securityContext.capabilities does not drop ALL")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("securityContext.seccompProfile is not RuntimeDefault")
    return problems


def probe_paths(container: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Each probe's path and port number (a named port resolved among the container's)."""
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            get = container[kind]["httpGet"]
            port = get["port"]
            paths[kind] = (get["path"], named[port] if isinstance(port, str) else port)
    return paths


def check_routes(app: Flask, paths: dict[str, tuple[str, int]], settings: Settings) -> list[str]:
    """Probe paths that are not GET routes of the app, need a token, or do not answer 200."""
    problems = []
    adapter = app.url_map.bind("localhost")
    client = app.test_client()
    open_paths = exempt_paths(settings.auth_exempt)
    for kind, (path, _) in paths.items():
        try:
            adapter.match(path, method="GET")
        except HTTPException as e:
            problems.append(f"{kind} {path} is not a GET route of the app ({e.code})")
            continue
        if path not in open_paths:
            problems.append(f"{kind} {path} needs a token with GAN_AUTH_EXEMPT as set")
        status = client.get(path).status_code
        if status != 200:
            problems.append(f"{kind} {path} answers {status} on a ready service")
    return problems


def app_for(env: dict[str, str], tmp_path: Path) -> Flask:
    """The app with ``env``'s settings on the tiny test repository (the image's models are not
    here), metrics in a temporary directory."""
    settings = dict(env)
    settings["GAN_MODELS_DIR"] = str(write_repository(tmp_path / "models"))
    settings["GAN_METRICS_DIR"] = str(tmp_path / "metrics")
    return create_app(settings)


def deployment_pod(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its one container."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def check_pod(pod: dict[str, Any], settings: Settings) -> list[str]:
    """Pod-level problems: security, the grace period, where the service writes and reads."""
    problems = []
    container = pod["containers"][0]
    security = pod.get("securityContext", {})
    uid, gid = dockerfile_user()
    if (security.get("runAsNonRoot"), security.get("runAsUser"), security.get("runAsGroup")) != (
        True,
        uid,
        gid,
    ):
        problems.append(f"the pod does not run as the image's non-root {uid}:{gid}")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("the pod's seccompProfile is not RuntimeDefault")
    if pod.get("enableServiceLinks", True):
        problems.append("service links on: Services named gan-* inject unknown GAN_ variables")
    sleep = 0
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is not None:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, f"preStop is not a sleep: {command}"
        sleep = int(command[1])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= sleep + settings.graceful_timeout:
        problems.append(
            f"terminationGracePeriodSeconds {grace} does not outlast the preStop sleep {sleep} "
            f"+ GAN_GRACEFUL_TIMEOUT {settings.graceful_timeout}"
        )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    metrics = mounts.get(str(settings.metrics_dir))
    if settings.metrics_dir is None or metrics is None or metrics.get("readOnly"):
        problems.append(f"GAN_METRICS_DIR {settings.metrics_dir} is not a writable mount")
    elif volumes[metrics["name"]].get("emptyDir", {}).get("medium") != "Memory":
        problems.append("GAN_METRICS_DIR is not on a memory-backed emptyDir")
    models = mounts.get(str(settings.models_dir))
    if models is None:
        if str(settings.models_dir) != dockerfile_env()["GAN_MODELS_DIR"]:
            problems.append(f"GAN_MODELS_DIR {settings.models_dir} is neither a mount nor the image's")
    elif not models.get("readOnly") or "persistentVolumeClaim" not in volumes[models["name"]]:
        problems.append("GAN_MODELS_DIR's mount is not a read-only PersistentVolumeClaim")
    return problems


def check_objects(objects: list[dict[str, Any]]) -> list[str]:
    """The objects' references to each other: selectors, the Service's port, the HPA, the PDB."""
    problems = []
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    _, container = deployment_pod(objects)
    port_names = {p.get("name") for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    if not selects(deployment["spec"]["selector"]["matchLabels"]):
        problems.append("the Deployment's selector does not match its pods")
    if "replicas" in deployment["spec"]:
        problems.append("the Deployment sets replicas, which the HPA owns")
    service = one(objects, "Service")
    if not selects(service["spec"]["selector"]):
        problems.append("the Service selects no pod of the Deployment")
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in port_names:
            problems.append(f"the Service's targetPort {port['targetPort']} is no container port")
    hpa = one(objects, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append("the HPA scales something else than the Deployment")
    if [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] != ["cpu"]:
        problems.append("the HPA does not scale on CPU utilisation")
    pdb = one(objects, "PodDisruptionBudget")
    if not selects(pdb["spec"]["selector"]["matchLabels"]):
        problems.append("the PodDisruptionBudget selects no pod of the Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("fewer than two pods: the PodDisruptionBudget would block every drain")
    return problems


def check_probes(paths: dict[str, tuple[str, int]], container: dict[str, Any]) -> list[str]:
    """The probes are on the documented endpoints, and the startup probe waits long enough."""
    problems = []
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    for kind, path in expected.items():
        if kind not in paths or paths[kind][0] != path:
            problems.append(f"{kind} is not on {path}")
    port = container["ports"][0]["containerPort"]
    problems += [f"{kind} probes port {p}" for kind, (_, p) in paths.items() if p != port]
    startup = container.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < STARTUP_BUDGET_S:
        problems.append(f"the startup probe gives up after {budget} s, before {STARTUP_BUDGET_S} s")
    return problems


# --- Tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_match_the_api_schemas(overlay: Path, version: str) -> None:
    objects = build(overlay)
    assert {obj["kind"] for obj in objects} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"
    }  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_fails_on_a_wrong_field() -> None:
    deployment = one(build(KUBERNETES), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[0], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    for directory in OVERLAYS:
        kustomization = load_yaml(directory / "kustomization.yaml")[0]
        listed = {r for r in kustomization["resources"] if not (directory / r).is_dir()}
        listed |= {p["path"] for p in kustomization.get("patches", [])}
        on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk, f"{directory}: listed {listed}, on disk {on_disk}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_deployment_matches_the_code(
    overlay: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = build(overlay)
    pod, container = deployment_pod(objects)
    settings, env = settings_for(container, monkeypatch)
    paths = probe_paths(container)
    assert check_container(container, settings) == []
    assert check_pod(pod, settings) == []
    assert check_objects(objects) == []
    assert check_probes(paths, container) == []
    assert check_routes(app_for(env, tmp_path), paths, settings) == []


def test_models_volume_mounts_the_claim_at_gan_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = build(KUBERNETES / "models-volume")
    pod, container = deployment_pod(objects)
    settings, _ = settings_for(container, monkeypatch)
    claim = one(objects, "PersistentVolumeClaim")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(settings.models_dir))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    # Every pod, on any node, mounts the same files.
    assert set(claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    base_pod, _ = deployment_pod(build(KUBERNETES))
    assert [v["name"] for v in base_pod["volumes"]] == [
        v["name"] for v in pod["volumes"] if v is not volume
    ]


def test_the_checks_catch_mistakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each check fails on a manifest with the mistake it is there for."""
    objects = build(KUBERNETES)
    pod, container = deployment_pod(objects)
    settings, env = settings_for(container, monkeypatch)

    def variant() -> tuple[dict[str, Any], dict[str, Any]]:
        changed = copy.deepcopy(pod)
        return changed, changed["containers"][0]

    changed_pod, changed = variant()
    changed["env"].append({"name": "GAN_WORKER", "value": "2"})
    assert check_container(changed, settings) == ["GAN_WORKER is not a setting of the service"]

    changed_pod, changed = variant()
    changed["resources"]["limits"]["cpu"] = changed["resources"]["requests"]["cpu"] = "3"
    assert any("GAN_WORKERS x GAN_THREADS" in p for p in check_container(changed, settings))

    changed_pod, changed = variant()
    changed["ports"][0]["containerPort"] = 8080
    assert any("GAN_BIND" in p for p in check_container(changed, settings))

    changed_pod, changed = variant()
    changed["securityContext"]["readOnlyRootFilesystem"] = False
    changed["securityContext"]["runAsUser"] = 1000
    assert len(check_container(changed, settings)) == 2

    changed_pod, changed = variant()
    changed_pod["terminationGracePeriodSeconds"] = settings.graceful_timeout
    assert any("terminationGracePeriodSeconds" in p for p in check_pod(changed_pod, settings))

    changed_pod, changed = variant()
    changed["volumeMounts"] = []
    assert any("GAN_METRICS_DIR" in p for p in check_pod(changed_pod, settings))

    changed_pod, changed = variant()
    changed["readinessProbe"]["httpGet"]["path"] = "/ready"
    changed["livenessProbe"]["httpGet"]["path"] = "/v2/models/tiny/infer"  # POST only
    app = app_for(env, tmp_path)
    problems = check_routes(app, probe_paths(changed), settings)
    assert [p.split(" (")[0] for p in problems] == [
        "readinessProbe /ready is not a GET route of the app",
        "livenessProbe /v2/models/tiny/infer is not a GET route of the app",
    ]
    assert any("readinessProbe is not on /readyz" in p for p in check_probes(probe_paths(changed), changed))

    # With auth on and the health routes not exempt, the probes would get 401.
    locked = {**env, "GAN_API_TOKEN": "t" * 32, "GAN_AUTH_EXEMPT": "none"}
    locked_settings = load_settings(locked)
    problems = check_routes(app_for(locked, tmp_path / "locked"), probe_paths(container), locked_settings)
    assert any("needs a token" in p for p in problems) and any("answers 401" in p for p in problems)


@pytest.mark.parametrize(
    ("name", "value"),
    [("GAN_WORKERS", "two"), ("GAN_THREADS", "4"), ("GAN_GRACEFUL_TIMEOUT", "-1"), ("GAN_BIND", " ")],
)
def test_an_invalid_value_in_the_manifest_fails(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, container = deployment_pod(build(KUBERNETES))
    changed = copy.deepcopy(container)
    entry = next((e for e in changed["env"] if e["name"] == name), None)
    if entry is None:
        changed["env"].append({"name": name, "value": value})
    else:
        entry["value"] = value
    with pytest.raises(ConfigError, match=name if name != "GAN_THREADS" else "exceeds"):
        settings_for(changed, monkeypatch)


# --- KServe -----------------------------------------------------------------------------------
def kserve_predictor() -> tuple[dict[str, Any], dict[str, Any]]:
    """The InferenceService and its predictor container."""
    isvc = load_yaml(KSERVE)[0]
    containers = isvc["spec"]["predictor"]["containers"]
    return isvc, next(c for c in containers if c["name"] == "kserve-container")


def predictor_as_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The predictor's inlined PodSpec as a Pod, for Kubernetes' schema."""
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in KSERVE_EXTENSION_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_inferenceservice_matches_its_schema(version: str) -> None:
    isvc, _ = kserve_predictor()
    jsonschema.validate(isvc, json.loads(KSERVE_SCHEMA.read_text()))
    kubernetes_validate.validate(predictor_as_pod(isvc), version, strict=True)


def test_inferenceservice_schema_fails_on_mistakes() -> None:
    isvc, _ = kserve_predictor()
    schema = json.loads(KSERVE_SCHEMA.read_text())
    for change in (
        lambda s: s["spec"]["predictor"].update(scaleMetric="latency"),
        lambda s: s["spec"]["predictor"]["containers"][0].update(name="gan-serve"),
        lambda s: s["spec"]["predictor"].update(model={"modelFormat": {"name": "onnx"}}),
        lambda s: s["metadata"].update(name="GAN_serve"),
        lambda s: s["spec"].update(predicter=s["spec"].pop("predictor")),
    ):
        changed = copy.deepcopy(isvc)
        change(changed)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(changed, schema)


def test_inferenceservice_matches_the_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isvc, container = kserve_predictor()
    settings, env = settings_for(container, monkeypatch)
    assert check_container(container, settings) == []
    assert env_of(container)["PROTOCOL"] == "v2"
    # Knative routes to the one port by its name's protocol; gunicorn speaks HTTP/1.1.
    assert [p["name"] for p in container["ports"]] == ["http1"]
    assert set(container) <= KNATIVE_CONTAINER_FIELDS, set(container) - KNATIVE_CONTAINER_FIELDS
    assert isvc["spec"]["predictor"].get("enableServiceLinks") is False
    paths = probe_paths(container)
    assert {kind: path for kind, (path, _) in paths.items()} == {
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }
    assert {port for _, port in paths.values()} == {container["ports"][0]["containerPort"]}
    app = app_for(env, tmp_path)
    assert check_routes(app, paths, settings) == []
    # The inference route KServe's clients call, for a model of the repository.
    adapter = app.url_map.bind("localhost")
    assert adapter.match("/v2/models/tiny/infer", method="POST")[0] == "v2.infer"
