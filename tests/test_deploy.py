"""The deployment files agree with the server: every setting they give is one `rnnserve serve` takes, with a value
it accepts, and the ports, probes, grace periods and user they declare are the ones the server and image use."""

import re
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from rnnserve.cli import build_parser
from rnnserve.client.resumable import AFFINITY_HEADER
from rnnserve.options import config_from, env_name
from rnnserve.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {env_name(name) for name in ServerConfig.__dataclass_fields__}
IMAGE_USER = 10001
SCALE_OUT = ROOT / "deploy" / "kubernetes" / "rnnserve-scale-out.yaml"


def manifests() -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(ROOT)}#{index}", document)
        for path in sorted((ROOT / "deploy").rglob("*.yaml"))
        for index, document in enumerate(yaml.safe_load_all(path.read_text()))
    ]


def services() -> list[tuple[str, dict]]:
    return [(where, document) for where, document in manifests() if document["kind"] == "Service"]


def containers() -> list[tuple[str, dict, dict]]:
    """(where, the pod or runtime spec, the container) for every container that runs rnnserve."""
    found = []
    for where, document in manifests():
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
        elif document["kind"] == "ServingRuntime":
            pod = document["spec"]
        else:
            continue
        found += [(where, pod, container) for container in pod["containers"] if container["image"].startswith("rnnserve/")]
    return found


def served_config(container: dict) -> ServerConfig:
    """The configuration the container's server would run with: its arguments over its environment."""
    environ = {entry["name"]: entry["value"] for entry in container.get("env", [])}
    unknown = {name for name in environ if name.startswith("RNNSERVE_")} - SETTINGS
    assert not unknown, f"no such settings: {unknown}"
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    return config_from(ServerConfig, args, environ | _dockerfile_environment())


def _dockerfile_environment() -> dict[str, str]:
    """The serve image's ENV (the first stage that sets RNNSERVE_ variables)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("FROM ${BASE} AS serve\n")[1].split("\nFROM ")[0]
    (env_line,) = [line for line in stage.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(RNNSERVE_\w+)=(\S+)", env_line))


def test_there_are_manifests_to_check():
    kinds = {document["kind"] for _, document in manifests()}
    assert {"Deployment", "Service", "ConfigMap", "ServingRuntime", "InferenceService"} <= kinds
    assert len(containers()) == 3


@pytest.mark.parametrize("where, pod, container", containers(), ids=[c[0] for c in containers()])
def test_every_container_runs_a_server_the_flags_accept_on_the_ports_it_declares(where, pod, container):
    config = served_config(container)
    assert config.host == "0.0.0.0" and config.metrics_host == "0.0.0.0"
    ports = {port["containerPort"] for port in container["ports"]}
    if "annotations" in pod:  # a KServe runtime: Knative routes one port; Prometheus finds metrics by annotation
        assert ports == {config.port} and pod["annotations"]["prometheus.kserve.io/port"] == str(config.metrics_port)
    else:
        assert ports == {config.port, config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert container[probe]["grpc"]["port"] == config.port
    assert container["image"] == f"rnnserve/serve:{metadata.version('rnnserve')}"
    if "terminationGracePeriodSeconds" in pod:
        assert pod["terminationGracePeriodSeconds"] > config.grace_s + 5, "the kubelet would kill calls still draining"
        assert pod["securityContext"]["runAsUser"] == IMAGE_USER


@pytest.mark.parametrize("where, service", services(), ids=[s[0] for s in services()])
def test_every_service_routes_to_ports_its_pods_declare(where, service):
    (pods,) = [  # exactly one Deployment in the same file has the pods it selects
        document["spec"]["template"] for w, document in manifests()
        if w.split("#")[0] == where.split("#")[0] and document["kind"] == "Deployment"
        and document["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ]
    declared = {port["name"] for container in pods["spec"]["containers"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= declared


def test_the_scaled_out_replicas_share_the_store_and_envoy_keeps_each_session_on_one():
    documents = {(d["kind"], d["metadata"]["name"]): d for w, d in manifests() if w.startswith(str(SCALE_OUT.relative_to(ROOT)))}
    replicas = documents["Deployment", "rnnserve-replicas"]["spec"]["template"]["spec"]["containers"][0]
    config = served_config(replicas)
    store = urlparse(config.state_store)
    store_service = documents["Service", store.hostname]["spec"]
    assert store.scheme == "redis" and store.port in {p["port"] for p in store_service["ports"]}

    envoy = yaml.safe_load(documents["ConfigMap", "rnnserve-envoy"]["data"]["envoy.yaml"])
    (listener,) = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["hash_policy"] == [{"header": {"header_name": AFFINITY_HEADER}}]  # what ResumableStream sends
    assert route["route"]["timeout"] == "0s" and manager["stream_idle_timeout"] == "3600s"  # streams are long
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["name"] == route["route"]["cluster"] and cluster["lb_policy"] in ("RING_HASH", "MAGLEV")
    assert [check.keys() & {"grpc_health_check"} for check in cluster["health_checks"]] == [{"grpc_health_check"}]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    headless = documents["Service", address["address"]]["spec"]
    assert headless["clusterIP"] == "None" and address["port_value"] == config.port  # one host per replica
    assert headless["selector"] == documents["Deployment", "rnnserve-replicas"]["spec"]["selector"]["matchLabels"]

    proxy = documents["Deployment", "rnnserve-envoy"]["spec"]["template"]["spec"]
    (container,) = proxy["containers"]
    assert listener["address"]["socket_address"]["port_value"] == container["ports"][0]["containerPort"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"] == ["--config-path", f"{mount}/envoy.yaml"]
    assert proxy["volumes"][0]["configMap"]["name"] == "rnnserve-envoy"
    assert documents["Service", "rnnserve"]["spec"]["selector"] == documents["Deployment", "rnnserve-envoy"]["spec"]["selector"]["matchLabels"]


def test_the_image_serves_on_the_ports_it_exposes_and_checks_its_health_there():
    text = (ROOT / "Dockerfile").read_text()
    config = config_from(ServerConfig, build_parser().parse_args(["serve"]), _dockerfile_environment())
    serve = text.split("FROM ${BASE} AS serve\n")[1].split("\nFROM ")[0]
    assert f"EXPOSE {config.port} {config.metrics_port}" in serve
    assert 'rnnserve health --target "127.0.0.1:${RNNSERVE_PORT}"' in serve
    assert f"--uid {IMAGE_USER}" in serve and "USER rnnserve" in serve
    assert config.grace_s < 10, "docker stop kills after 10 s: the grace period must end first"
