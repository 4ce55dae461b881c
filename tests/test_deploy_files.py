"""docker-compose.yml, the Kubernetes manifests, the Dockerfile and nginx.conf: valid by
their schemas, and naming only services, ports, modules and variables the code has.

No Docker engine or cluster runs here: the compose file is validated against the Compose
Specification's JSON schema (tests/data/compose-spec.json, see tests/data/README.md), the
manifests against the Kubernetes schemas shipped by the `kubernetes-validate` package.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.config.settings import Settings
from deploy.local import node_env
from deploy.nginx_conf import NGINX_CONF, LocalNginx, RenderError, render
from tests.support.nginx import nginx_binary
from tests.test_docs import read_variables

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())

# Set in the deployment files ahead of the code that reads them; the lead removes each
# entry when its issue is merged (the test then checks the real name).
def known_variables() -> set[str]:
    return read_variables()


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def check_command(argv: list[str]) -> None:
    """`python -m MODULE` names a module that exists (or is announced)."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module


# --- docker compose ----------------------------------------------------------------------

def test_compose_file_is_valid_by_the_compose_specification_schema() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose())
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject mistakes
        jsonschema.Draft201909Validator(schema).validate(
            {"services": {"node": {"replicas": 3}}})


def test_compose_services_ports_modules_and_variables_exist_in_the_code() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "node", "reaper", "webhooks", "nginx"}
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        assert set(service.get("environment", {})) <= known_variables(), name
        if "command" in service and name != "redis":
            check_command(service["command"])
    node, nginx = services["node"], services["nginx"]
    assert (ROOT / node["build"]["dockerfile"]).is_file()
    port = int(node["environment"].get("PORT", Settings().port))
    assert node["expose"] == [str(port)]
    # nginx.conf, mounted as it is, balances the `node` service on that port.
    assert nginx["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert re.search(rf"^\s*server node:{port}\b.*# @local:servers$", NGINX_CONF.read_text(),
                     re.M)
    [published] = nginx["ports"]
    assert published.split(":")[-1] == "80"
    assert re.search(r"^\s*listen 80;\s*# @local:listen$", NGINX_CONF.read_text(), re.M)
    assert nginx["depends_on"]["node"]["condition"] == "service_healthy"
    assert services["reaper"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_runs_three_distinct_nodes_that_drain_before_being_killed() -> None:
    node = compose()["services"]["node"]
    assert node["deploy"]["replicas"] >= 3
    assert "NODE_ID" not in node["environment"]  # each replica: hostname + random suffix
    drain = int(node["environment"]["DRAIN_SECONDS"])
    assert seconds(node["stop_grace_period"]) >= drain + 5
    for service in compose()["services"].values():  # the schema leaves durations unchecked
        for key in ("interval", "timeout"):
            if key in service.get("healthcheck", {}):
                assert seconds(service["healthcheck"][key]) > 0
    # The compose network is the one whose proxies the nodes believe.
    subnet = compose()["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert node["environment"]["TRUSTED_PROXIES"] == subnet


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


# --- Kubernetes --------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_are_valid_by_the_kubernetes_schemas(version: str) -> None:
    docs = manifests()
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment", "Service", "Ingress", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= kinds
    for doc in docs:
        if doc["kind"] == "Kustomization":
            continue  # kustomize's own file, not an API object: checked below
        kubernetes_validate.validate(doc, version, strict=True)
    # Strict: a misspelt field is an error, not silently ignored as a cluster would.
    deployment = by_kind("Deployment", "signaling-node")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, version, strict=True)


def by_kind(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_lists_every_manifest_but_the_dev_redis() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "dev-redis.yaml"}
    assert set(kustomization["resources"]) == files


def test_kubernetes_node_probes_drain_and_names_match_the_code() -> None:
    deployment = by_kind("Deployment", "signaling-node")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    check_command(container["command"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    [port] = container["ports"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["PORT"]["value"]) == port["containerPort"]
    assert env["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = by_kind("ConfigMap", "signaling-config")["data"]
    assert set(config) | set(env) <= known_variables()
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + int(config["DRAIN_SECONDS"]) + 5
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind("Service", "signaling-node")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    backend = by_kind("Ingress", "signaling")["spec"]["rules"][0]["http"]["paths"][0]
    assert backend["backend"]["service"]["name"] == "signaling-node"
    for kind in ("PodDisruptionBudget",):
        assert by_kind(kind, "signaling-node")["spec"]["selector"]["matchLabels"] == (
            deployment["spec"]["selector"]["matchLabels"])
    assert by_kind("HorizontalPodAutoscaler", "signaling-node")["spec"]["scaleTargetRef"][
        "name"] == "signaling-node"


def test_kubernetes_reaper_and_ingress_timeouts() -> None:
    [reaper] = by_kind("Deployment", "signaling-reaper")["spec"]["template"]["spec"][
        "containers"]
    check_command(reaper["command"])
    assert {e["name"] for e in reaper["env"]} <= known_variables()
    annotations = by_kind("Ingress", "signaling")["metadata"]["annotations"]
    timeout = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > 2 * Settings().ws_heartbeat_seconds
    assert "http_503" in annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"]


# --- nginx.conf, its rendering, the launcher's environment, the Dockerfile ----------------

def test_nginx_conf_websocket_timeouts_outlast_the_node_heartbeat() -> None:
    text = NGINX_CONF.read_text()
    ws = text.split("location /ws/ {", 1)[1].split("}", 1)[0]
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"{directive} (\d+)s;", ws)
        assert value and int(value[1]) > 2 * Settings().ws_heartbeat_seconds, directive
    assert "least_conn;" in text and "proxy_buffering off;" in text
    assert "proxy_next_upstream error timeout http_502 http_503;" in text
    assert "map $http_upgrade $connection_upgrade" in text and "escape=json" in text


def test_rendered_nginx_conf_passes_nginx_own_check(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(LocalNginx(18080, [13001, 13002, 13003], tmp_path)))
    text = conf.read_text()
    servers = re.findall(r"^\s*server (127\.0\.0\.1:\d+) ", text, re.M)
    assert servers == ["127.0.0.1:13001", "127.0.0.1:13002", "127.0.0.1:13003"]
    assert "listen 127.0.0.1:18080;" in text
    assert "node:3001" not in text and "/var/cache" not in text and "/run/" not in text
    done = subprocess.run([nginx_binary(), "-t", "-p", f"{tmp_path}/", "-c", str(conf),
                           "-e", "stderr"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("text, message", [
    ("listen 80;\n", "exactly one @local:servers"),
    ("server a:1;  # @local:servers\nlisten 80;  # @local:listen\nx 1;  # @local:nope\n",
     "unknown tag"),
    ("server a:1;  # @local:servers\nlisten 80; # @local:listen\npid run.pid;  # @local:prefix\n",
     "absolute/path"),
    ("server a:1 # @local:servers\n", "must follow"),
])
def test_rendering_refuses_a_config_it_cannot_rewrite(text: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(LocalNginx(1, [2], Path("/tmp")), text)


def test_launcher_sets_only_variables_the_code_reads() -> None:
    env = node_env(1, 3001, "redis://127.0.0.1:1/0", "sig:", 8080, {})
    assert set(env) <= known_variables()
    assert Settings.from_env(env).node_id == "local-1"


def test_dockerfile_is_multi_stage_non_root_without_test_dependencies() -> None:
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    # From the lock, runtime packages only: the same bytes as every other install.
    assert re.search(r"^RUN uv sync --locked --no-dev --no-editable$", text, re.M)
    assert "--extra" not in text and "[test]" not in text
    assert "curl" not in text.split("HEALTHCHECK", 1)[1]

