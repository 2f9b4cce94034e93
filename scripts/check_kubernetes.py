"""Checks the manifests in deploy/kubernetes offline (run by scripts/check-kubernetes.sh).

- Every built-in resource is validated against the Kubernetes schemas that kubernetes-validate bundles, strictly
  (a field the schema does not have is an error, so a misspelt probe does not pass as absent).
- The custom resources (PodMonitor, ScaledObject) have no bundled schema: they must parse, have the fields they
  need and no others at the levels written here.
- The kustomization lists every manifest of the folder, and only those.
- What must agree across files does: selectors pick the pods they are meant for, the ScaledObject scales the
  worker Deployment, the grace period outlasts a graceful stop, the probes, the non-root and read-only
  settings, no service links, and every Secret key used is documented in the folder's README.
"""

import re
import sys
from pathlib import Path

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
FOLDER = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
ALERT_TESTS = FOLDER.parent / "monitoring" / "prometheus" / "alerts.test.yml"

errors: list[str] = []


def fail(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


def dig(value, *path):
    """The value at `path` in nested dicts and lists, or None."""
    for step in path:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            return None
    return value


def check_shape(where: str, value, required: set[str], allowed: set[str]) -> None:
    """A mapping with every key of `required` and none outside `required | allowed`."""
    if not isinstance(value, dict):
        fail(where, "must be a mapping")
        return
    for key in sorted(required - value.keys()):
        fail(where, f"`{key}` is required")
    for key in sorted(value.keys() - required - allowed):
        fail(where, f"`{key}` is not a field here")


def check_pod_monitor(where: str, spec: dict) -> None:
    if not dig(spec, "selector", "matchLabels"):
        fail(where, "spec.selector.matchLabels must pick the pods")
    endpoints = dig(spec, "podMetricsEndpoints") or []
    if not endpoints:
        fail(where, "spec.podMetricsEndpoints must not be empty")
    for index, endpoint in enumerate(endpoints):
        check_shape(
            f"{where} podMetricsEndpoints[{index}]",
            endpoint,
            {"port", "path"},
            {"interval", "scrapeTimeout", "scheme", "authorization", "relabelings", "metricRelabelings", "honorLabels"},
        )
        # The alerts select job="tenantmq"; the Operator would name the job `<namespace>/<name>`.
        jobs = [r.get("replacement") for r in dig(endpoint, "relabelings") or [] if r.get("targetLabel") == "job"]
        if jobs != ["tenantmq"]:
            fail(f"{where} podMetricsEndpoints[{index}]", "must relabel the job to `tenantmq`, as the alerts select it")
        authorization = dig(endpoint, "authorization")
        if authorization is not None:
            check_shape(f"{where} authorization", authorization, {"type", "credentials"}, set())
            check_shape(f"{where} authorization.credentials", dig(authorization, "credentials"), {"name", "key"}, set())


def check_scaled_object(where: str, spec: dict) -> None:
    check_shape(f"{where} scaleTargetRef", dig(spec, "scaleTargetRef"), {"name"}, {"apiVersion", "kind"})
    low, high = dig(spec, "minReplicaCount"), dig(spec, "maxReplicaCount")
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        fail(where, "needs 1 <= minReplicaCount <= maxReplicaCount")
    fallback = dig(spec, "fallback")
    if fallback is not None:
        check_shape(f"{where} fallback", fallback, {"failureThreshold", "replicas"}, set())
    triggers = dig(spec, "triggers") or []
    if not triggers:
        fail(where, "spec.triggers must not be empty")
    for index, trigger in enumerate(triggers):
        check_shape(f"{where} triggers[{index}]", trigger, {"type", "metadata"}, {"name", "authenticationRef"})
        if dig(trigger, "type") == "prometheus":
            metadata = dig(trigger, "metadata")
            check_shape(
                f"{where} triggers[{index}].metadata",
                metadata,
                {"serverAddress", "query", "threshold"},
                {"activationThreshold", "ignoreNullValues", "namespace", "authModes"},
            )
            # KEDA reads these as strings; a YAML number or boolean is refused when the ScaledObject is applied.
            for key in ("threshold", "activationThreshold"):
                value = dig(metadata, key)
                if value is not None and not (isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value)):
                    fail(where, f"triggers[{index}].metadata.{key} must be a number in quotes")
            ignore_null = dig(metadata, "ignoreNullValues")
            if ignore_null is not None and ignore_null not in ("true", "false"):
                fail(where, f"triggers[{index}].metadata.ignoreNullValues must be \"true\" or \"false\" in quotes")
            # The query's cases are unit-tested by promtool: the test must hold the query as it is deployed.
            query = dig(metadata, "query")
            if query is None or query not in ALERT_TESTS.read_text():
                fail(where, f"triggers[{index}].metadata.query is not the one tested in {ALERT_TESTS}")


# Per custom resource: the fields its spec must have, those it may have besides, and the check of the rest.
CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        {"selector", "podMetricsEndpoints"},
        {"namespaceSelector", "jobLabel", "podTargetLabels", "sampleLimit"},
        check_pod_monitor,
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): (
        {"scaleTargetRef", "triggers"},
        {
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "idleReplicaCount",
            "fallback",
            "advanced",
        },
        check_scaled_object,
    ),
}


def load(path: Path) -> list[dict]:
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except yaml.YAMLError as error:
        fail(path.name, f"not YAML: {error}")
        return []


def seconds(duration: str) -> float:
    """`500ms`, `30s`, `5m`, `1h` (what the configuration's durations are written like here)."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", str(duration).strip())
    if not match:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_workloads(resources: list[tuple[str, dict]]) -> None:
    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for where, resource in resources:
        by_kind.setdefault(resource.get("kind"), []).append((where, resource))
    deployments = {dig(r, "metadata", "name"): r for _, r in by_kind.get("Deployment", [])}
    pod_labels = {name: dig(r, "spec", "template", "metadata", "labels") or {} for name, r in deployments.items()}

    config = {}
    for where, configmap in by_kind.get("ConfigMap", []):
        config = yaml.safe_load(dig(configmap, "data", "config.yaml") or "") or {}
    shutdown = seconds(config.get("shutdown_timeout", "30s"))

    secret_keys = set()
    workloads = list(by_kind.get("Deployment", [])) + list(by_kind.get("Job", []))
    for where, workload in workloads:
        pod = dig(workload, "spec", "template", "spec") or {}
        if dig(pod, "securityContext", "runAsNonRoot") is not True or not dig(pod, "securityContext", "runAsUser"):
            fail(where, "the pod must run as a numeric non-root user (runAsNonRoot, runAsUser)")
        if pod.get("enableServiceLinks") is not False:
            fail(where, "needs enableServiceLinks: false (the Services' variables share the TENANTMQ_ prefix)")
        for container in pod.get("containers", []):
            name = f"{where} container {container.get('name')}"
            if dig(container, "securityContext", "readOnlyRootFilesystem") is not True:
                fail(name, "needs readOnlyRootFilesystem: true")
            if dig(container, "securityContext", "allowPrivilegeEscalation") is not False:
                fail(name, "needs allowPrivilegeEscalation: false")
            if not dig(container, "resources", "requests") or not dig(container, "resources", "limits", "memory"):
                fail(name, "needs resource requests and a memory limit")
            for variable in container.get("env", []):
                reference = dig(variable, "valueFrom", "secretKeyRef")
                if reference:
                    secret_keys.add((reference.get("name"), reference.get("key")))
            if workload.get("kind") != "Deployment":
                continue
            for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                if not container.get(probe):
                    fail(name, f"needs a {probe}")
                elif path and dig(container, probe, "httpGet", "path") != path:
                    fail(name, f"{probe} must ask {path}")
            pause = dig(container, "lifecycle", "preStop", "sleep", "seconds") or 0
            grace = pod.get("terminationGracePeriodSeconds", 30)
            # A graceful stop takes up to 10 s past shutdown_timeout (connections, pool, the last spans).
            if grace <= shutdown + 10 + pause:
                fail(
                    where,
                    f"terminationGracePeriodSeconds ({grace}) must exceed shutdown_timeout ({shutdown:g}s) "
                    f"plus 10s plus the preStop pause ({pause}s)",
                )

    for where, service in by_kind.get("Service", []):
        picked = [name for name, labels in pod_labels.items() if matches(dig(service, "spec", "selector"), labels)]
        if picked != ["tenantmq-api"]:
            fail(where, f"must select the api pods only, selects {picked}")
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for where, resource in by_kind.get(kind, []):
            selector = dig(resource, "spec", "selector", "matchLabels") or {}
            if not any(matches(selector, labels) for labels in pod_labels.values()):
                fail(where, f"{kind} {dig(resource, 'metadata', 'name')} selects no pods")
    for where, monitor in by_kind.get("PodMonitor", []):
        ports = {
            port.get("name")
            for d in deployments.values()
            for c in dig(d, "spec", "template", "spec", "containers") or []
            for port in c.get("ports", [])
        }
        for endpoint in dig(monitor, "spec", "podMetricsEndpoints") or []:
            if endpoint.get("port") not in ports:
                fail(where, f"port {endpoint.get('port')!r} is no container port")
            reference = dig(endpoint, "authorization", "credentials")
            if reference:
                secret_keys.add((reference.get("name"), reference.get("key")))
    for where, scaled in by_kind.get("ScaledObject", []):
        target = dig(scaled, "spec", "scaleTargetRef", "name")
        if pod_labels.get(target, {}).get("app.kubernetes.io/component") != "worker":
            fail(where, f"must scale the worker Deployment, scales {target!r}")

    readme = (FOLDER / "README.md").read_text() if (FOLDER / "README.md").exists() else ""
    for name, key in sorted(secret_keys):
        if f"--from-literal={key}=" not in readme and f"--from-file={key}=" not in readme:
            fail("README.md", f"the Secret {name!r} needs key {key!r}: show how to create it")


def main() -> int:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text()) or {}
    listed = set(kustomization.get("resources", []))
    present = {path.name for path in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    for name in sorted(present - listed):
        fail("kustomization.yaml", f"does not list {name}")
    for name in sorted(listed - present):
        fail("kustomization.yaml", f"lists {name}, which does not exist")

    resources: list[tuple[str, dict]] = []
    for name in sorted(present):
        for index, resource in enumerate(load(FOLDER / name)):
            where = f"{name}[{index}] {resource.get('kind')}/{dig(resource, 'metadata', 'name')}"
            resources.append((where, resource))
            custom = CUSTOM.get((resource.get("apiVersion"), resource.get("kind")))
            if custom:
                required, allowed, check = custom
                if not dig(resource, "metadata", "name"):
                    fail(where, "metadata.name is required")
                check_shape(f"{where} spec", resource.get("spec"), required, allowed)
                check(where, resource.get("spec") or {})
                print(f"{where}: required fields present (custom resource, no bundled schema)")
                continue
            try:
                version = kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
                print(f"{where}: valid against Kubernetes {version} (strict)")
            except kubernetes_validate.ValidationError as error:
                fail(where, f"{'.'.join(str(step) for step in error.path)}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(where, "no bundled schema: a custom resource needs its own check in scripts/check_kubernetes.py")
    check_workloads(resources)

    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
