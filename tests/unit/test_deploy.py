"""Deploy files (Dockerfile, deploy/compose, deploy/k8s) agree with the code they deploy.

Pure and fast: every HFX command in the compose file and the Kubernetes manifests is parsed with
the real `hfx` parser, so a flag renamed or removed in services/cli.py fails here rather than in a
container; Prometheus must scrape every HFX service; the dashboard may only name metrics that
services/common/metrics.py defines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from concurrent import futures
from pathlib import Path

import pytest
import yaml

from services import argtypes, cli
from services.router.config import DEFAULT_CLASSES, load_classes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
K8S = DEPLOY / "k8s"
HFX_SERVICES = ("router", "scheduler", "scaler", "worker")
PD_WORKERS = ("prefill", "decode")    # compose profile `pd`: worker services with a P/D role
OBSERVABILITY = ("jaeger", "prometheus", "grafana")   # compose profile `observability`
# Deploy convention: the router serves /metrics on its HTTP port, the others on a metrics port.
METRICS_PORTS = {"router": 8000, "scheduler": 9100, "scaler": 9100, "worker": 9100}
METRICS_FLAGS = {"router": "--http-port", "scheduler": "--metrics-port", "scaler": "--metrics-port",
                 "worker": "--metrics-port"}
WORKER_PORT = 50060


def _model_dir_in_image() -> str:
    m = re.search(r"hfx model init --out ([^\s;]+)", (ROOT / "Dockerfile").read_text())
    assert m, "the Dockerfile must build the default model with `hfx model init --out DIR`"
    return m.group(1)


@pytest.fixture(scope="module")
def parser():
    """The real parser, except that --model accepts only the directory the image builds (that
    directory does not exist on the test machine, so the real existence check cannot run)."""
    image_model = _model_dir_in_image()

    def model_path(value: str) -> str:
        if value != image_model:
            raise ValueError(f"--model {value}: the image builds its model at {image_model}")
        return value

    # The classes file too lives only in the image; test_compose_router_classes_file_loads loads its source.
    originals = argtypes.model_dir, argtypes.classes_file
    argtypes.model_dir, argtypes.classes_file = model_path, str
    try:
        yield cli.build_parser()
    finally:
        argtypes.model_dir, argtypes.classes_file = originals


def _parse(parser, argv: list[str], where: str):
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `hfx {shlex.join(argv)}` is rejected by services.cli (see the error above)")


def _has_flag(parser, command: str, flag: str) -> bool:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return any(flag in a.option_strings for a in sub._actions)


def _check_metrics_port(parser, name: str, args, where: str) -> None:
    """Once the CLI has the flag, the deploy must serve metrics where Prometheus scrapes them."""
    flag = METRICS_FLAGS[name]
    if not _has_flag(parser, name, flag):
        pytest.skip(f"`hfx {name}` has no {flag} yet")
    port = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert port == METRICS_PORTS[name], (
        f"{where}: `{name}` serves metrics on {port} but is scraped on {METRICS_PORTS[name]}: "
        f"pass {flag}={METRICS_PORTS[name]}")


_INTERP = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with the defaults (the environment of the test is not the deploy's)."""
    return _INTERP.sub(lambda m: m.group(2) or "", value)


# -- compose ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _worker_entrypoint_prefix() -> list[str]:
    """What deploy/docker/worker-entrypoint.sh puts before the compose `command:` flags."""
    script = (DEPLOY / "docker" / "worker-entrypoint.sh").read_text()
    line = next(l for l in script.splitlines() if l.startswith("exec hfx "))
    argv = shlex.split(line.replace('"$HFX_INSTANCE_ID"', "worker-test").replace('"$HFX_WORKER_HOST"', "172.18.0.5"))
    assert argv[:2] == ["exec", "hfx"] and argv[-1] == "$@", line
    return argv[2:-1]


def _compose_argv(name: str, service: dict) -> list[str]:
    command = [_interpolate(str(c)) for c in service["command"]]
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return command
    assert entrypoint == ["hfx-worker"], f"{name}: unexpected entrypoint {entrypoint}"
    return _worker_entrypoint_prefix() + command


def test_compose_has_every_service(compose):
    assert "version" not in compose and "name" not in compose  # Compose Specification, as 1.29 accepts
    assert set(compose["services"]) >= {"redis", *OBSERVABILITY, *HFX_SERVICES, *PD_WORKERS, "autoscaler"}


def test_compose_core_stack_needs_no_pulled_image(compose):
    """Without a profile the stack is redis + HFX: images that can be built locally. The rest sits in
    profiles, and every third-party image name is fully qualified (short names fail on podman
    without unqualified-search-registries)."""
    for name, service in compose["services"].items():
        profiles = service.get("profiles", [])
        if name in OBSERVABILITY:
            assert profiles == ["observability"], name
        elif name in PD_WORKERS:
            assert profiles == ["pd"], name
        elif name == "autoscaler":
            assert profiles == ["autoscale"], name
        else:
            assert not profiles, f"{name} belongs to the core stack"
        image = _interpolate(service["image"])
        if image != "hfx:latest":
            assert re.match(r"^[a-z0-9.-]+\.[a-z]+/", image), f"{name}: {image} is not fully qualified"


def _hfx_env(service: dict) -> dict:
    return {k: _interpolate(str(v)) for k, v in service["environment"].items()}


@pytest.mark.parametrize("name", HFX_SERVICES + PD_WORKERS)
def test_compose_services_carry_the_internal_token(compose, name):
    service = compose["services"][name]
    env = _hfx_env(service)
    assert env["HFX_INTERNAL_TOKEN_FILE"] == "/run/secrets/hfx_internal_token"
    assert "hfx_internal_token" in service["secrets"]
    assert set(service["secrets"]) <= set(compose["secrets"])
    argtypes.tracing_config(env["HFX_TRACING"])   # the CLI's --tracing default in every container
    if name == "router":
        assert env["HFX_API_KEY_FILE"] == "/run/secrets/hfx_api_keys" and "hfx_api_keys" in service["secrets"]
    assert not any("--api-key=" in str(c) or "token" in str(c) for c in service["command"]), "secrets on a command line"


def test_compose_secrets_are_files_make_secrets_writes():
    compose = yaml.safe_load(COMPOSE.read_text())
    script = (DEPLOY / "make-secrets.sh").read_text()
    for secret in compose["secrets"].values():
        name = Path(_interpolate(secret["file"])).name
        assert f'"$DIR/{name}"' in script, f"deploy/make-secrets.sh does not write {name}"


def test_compose_autoscaler(compose, parser):
    service = compose["services"]["autoscaler"]
    assert service["profiles"] == ["autoscale"] and service["entrypoint"] == ["hfx-scaler"]
    script = (DEPLOY / "docker" / "scaler-entrypoint.sh").read_text()
    line = next(l for l in script.splitlines() if l.startswith("exec hfx "))
    prefix = shlex.split(line.replace('"--host=$HFX_WORKER_HOST"', "--host=172.18.0.9").replace('"$@"', ""))[2:]
    assert prefix == ["scaler", "--worker-arg=--host=172.18.0.9"], line
    assert "deploy/docker/scaler-entrypoint.sh" in (ROOT / "Dockerfile").read_text()
    args = _parse(parser, prefix + [_interpolate(str(c)) for c in service["command"]], "compose service autoscaler")
    assert args.autoscale and args.min_replicas >= 1 and args.max_replicas >= args.min_replicas
    assert args.scheduler_metrics == f"scheduler:{METRICS_PORTS['scheduler']}"
    assert args.router_metrics == f"router:{METRICS_PORTS['router']}"
    assert args.worker_arg == ["--host=172.18.0.9"] and args.host == "0.0.0.0"
    assert service["healthcheck"]["test"] == ["CMD", "hfx-health", str(args.port)]
    assert _hfx_env(service)["HFX_INTERNAL_TOKEN_FILE"] == "/run/secrets/hfx_internal_token"


@pytest.mark.parametrize("name", PD_WORKERS)
def test_compose_pd_workers(compose, parser, name):
    service = compose["services"][name]
    args = _parse(parser, _compose_argv(name, service), f"{COMPOSE.name} service {name}")
    assert args.command == "worker" and args.role.value == name and args.kv_transfer and args.kv_port
    assert service["healthcheck"]["test"] == ["CMD", "hfx-health", str(args.port)]
    assert args.scheduler == "scheduler:50052" and args.redis_url == "redis://redis:6379/0"


@pytest.mark.parametrize("name", HFX_SERVICES)
def test_compose_commands_parse_with_the_cli(compose, parser, name):
    service = compose["services"][name]
    assert _interpolate(service["image"]) == "hfx:latest"
    args = _parse(parser, _compose_argv(name, service), f"{COMPOSE.name} service {name}")
    assert args.command == name
    if name != "router":
        assert args.redis_url == "redis://redis:6379/0"
        assert args.scheduler if name != "scheduler" else True
    if name != "worker":  # a worker binds its container address (the entrypoint script)
        assert args.host == "0.0.0.0"
    if getattr(args, "model", None) is not None:
        assert args.model == _model_dir_in_image()
    if name == "scaler":
        assert args.replicas == 0, "compose runs workers as their own service; the scaler must not start more"
    if name == "worker":
        assert args.port == WORKER_PORT and args.instance_id == "worker-test" and args.host == "172.18.0.5"
    # The healthcheck probes the port the service listens on.
    assert service["healthcheck"]["test"] == ["CMD", "hfx-health", str(args.port)]


def test_compose_router_classes_file_loads(compose):
    mounts = compose["services"]["router"]["volumes"]
    src = next(m.split(":")[0] for m in mounts if ":/etc/hfx/classes.yaml" in m)
    # The file says it holds the router's built-in defaults; keep them in step.
    assert load_classes(COMPOSE_DIR / src) == DEFAULT_CLASSES


@pytest.mark.parametrize("name", HFX_SERVICES)
def test_compose_metrics_port_matches_scrape_config(compose, parser, name):
    args = _parse(parser, _compose_argv(name, compose["services"][name]), name)
    _check_metrics_port(parser, name, args, COMPOSE.name)


def test_prometheus_scrapes_every_hfx_service():
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for sd in job.get("dns_sd_configs", []):
            targets.update(f"{n}:{sd['port']}" for n in sd["names"])
        if job["job_name"].startswith("hfx-"):
            # The scheduler's per-instance gauges carry their own `instance` label.
            assert job.get("honor_labels") is True, job["job_name"]
    for name, port in METRICS_PORTS.items():
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"


def _exported_names() -> set[str]:
    metrics = pytest.importorskip("services.common.metrics")
    names = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def test_dashboard_names_only_exported_metrics():
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "hfx.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bhfx_[a-z0-9_]+", e)}
    assert used, "the dashboard queries no HFX metric"
    missing = used - _exported_names()
    assert not missing, f"dashboard metrics not defined in services/common/metrics.py: {sorted(missing)}"


def test_grafana_provisioning_matches_dashboard():
    sources = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/datasources.yml").read_text())
    uids = {d["type"]: d["uid"] for d in sources["datasources"]}
    assert set(uids) == {"prometheus", "jaeger"}
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "hfx.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uids["prometheus"], panel["title"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_validates():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFX_", "COMPOSE_"))}
    run = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr


# -- image helpers ---------------------------------------------------------------------------------

def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    first_from = text.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=\S+", text[:first_from], re.M), "BASE_IMAGE must be a build argument"
    assert 'ENTRYPOINT ["hfx"]' in text
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M), "the image must run as a non-root user"
    for helper in ("grpc-health-probe.py", "worker-entrypoint.sh"):
        assert f"deploy/docker/{helper}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored


def _load_probe():
    spec = importlib.util.spec_from_file_location("hfx_health_probe", DEPLOY / "docker" / "grpc-health-probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_probe_against_a_real_server():
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    probe = _load_probe()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe.main([str(port)]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe.main([str(port)]) == 0
        assert probe.main([f"127.0.0.1:{port}"]) == 0
        assert probe.main([f"127.0.0.1:{port}", "hfx.v1.Nothing"]) == 1  # NOT_FOUND
    finally:
        server.stop(None)
    assert probe.main([str(port)]) == 1  # nothing listening
    assert probe.main([]) == 2


# -- kubernetes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _of_kind(manifests, kind):
    return {doc["metadata"]["name"]: doc for _, doc in manifests if doc["kind"] == kind}


def test_k8s_manifests_are_well_formed(manifests):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files, "kustomization.yaml must list every manifest"
    for path, doc in manifests:
        if doc["kind"] == "Kustomization":
            continue
        assert doc.get("apiVersion") and doc["metadata"].get("name"), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "hfx", f"{path}: {doc['kind']} {doc['metadata']['name']}"
    assert set(_of_kind(manifests, "Deployment")) == {"redis", *HFX_SERVICES, *PD_WORKERS}
    assert set(_of_kind(manifests, "Service")) == {"redis", *HFX_SERVICES}


def test_k8s_services_select_deployments(manifests):
    deployments = _of_kind(manifests, "Deployment")
    for name, svc in _of_kind(manifests, "Service").items():
        matches = [d for d in deployments.values()
                   if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        port_names = {p["name"] for c in matches[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"


@pytest.mark.parametrize("name", HFX_SERVICES + PD_WORKERS)
def test_k8s_hfx_containers(manifests, parser, name):
    deployment = _of_kind(manifests, "Deployment")[name]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"].split(":")[0] == "hfx" and "command" not in container  # ENTRYPOINT ["hfx"]
    args = _parse(parser, container["args"], f"k8s Deployment {name}")
    if name in PD_WORKERS:   # a worker with a role
        assert args.role.value == name and args.kv_transfer and {"containerPort": args.kv_port, "name": "kv"} in (
            container["ports"])
        name = "worker"
    assert args.command == name
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["grpc"]["port"] == args.port
    assert {"containerPort": args.port, "name": "grpc"} in container["ports"]
    assert {"configMapRef": {"name": "hfx-config"}} in container["envFrom"]
    if name == "worker":
        assert args.instance_id == "$(POD_NAME)" and args.host == "$(POD_IP)"
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    else:
        assert args.host == "0.0.0.0"
    if name == "scaler":
        assert args.replicas == 0
    if name != "scheduler":
        assert args.scheduler == "scheduler:50052"
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORTS[name])
    assert METRICS_PORTS[name] in {p["containerPort"] for p in container["ports"]}
    _check_metrics_port(parser, name, args, f"k8s Deployment {name}")


def _mounts(pod: dict, container: dict) -> dict[str, str]:
    """mount path -> Secret name, for the container's Secret volumes."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in secrets}


@pytest.mark.parametrize("name", HFX_SERVICES + PD_WORKERS)
def test_k8s_hfx_pods_mount_the_internal_token(manifests, name):
    config = _of_kind(manifests, "ConfigMap")["hfx-config"]["data"]
    pod = _of_kind(manifests, "Deployment")[name]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = _mounts(pod, container)
    token = Path(config["HFX_INTERNAL_TOKEN_FILE"])
    assert mounts.get(str(token.parent)) == "hfx-internal-token", mounts
    assert pod["securityContext"]["fsGroup"] == 10001   # the Secret's files are group-readable
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if name == "router":
        keys = Path(env["HFX_API_KEY_FILE"])
        assert mounts.get(str(keys.parent)) == "hfx-api-keys", mounts
    assert not any("--api-key" in a for a in container["args"])


def test_k8s_secrets_come_from_make_secrets_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generated = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    assert set(generated) == {"hfx-internal-token", "hfx-api-keys"}
    script = (DEPLOY / "make-secrets.sh").read_text()
    for files in generated.values():
        for entry in files:
            key, _, source = entry.partition("=")
            assert source.startswith("secrets/") and f'"$DIR/{Path(source).name}"' in script, entry
    config = yaml.safe_load_all((K8S / "config.yaml").read_text())
    token_file = next(d for d in config if d["metadata"]["name"] == "hfx-config")["data"]["HFX_INTERNAL_TOKEN_FILE"]
    assert Path(token_file).name == generated["hfx-internal-token"][0].partition("=")[0]


def test_k8s_config_maps(manifests, tmp_path):
    maps = _of_kind(manifests, "ConfigMap")
    config = maps["hfx-config"]["data"]
    assert config["HFX_REDIS_URL"] == "redis://redis:6379/0"
    argtypes.tracing_config(config["HFX_TRACING"])  # what the CLI does with it
    argtypes.redis_url(config["HFX_REDIS_URL"])
    classes_file = tmp_path / "classes.yaml"
    classes_file.write_text(maps["hfx-classes"]["data"]["classes.yaml"])
    assert load_classes(classes_file) == load_classes(COMPOSE_DIR / "config" / "classes.yaml")


def test_k8s_network_policy_opens_only_the_routers_front_doors(manifests):
    policies = _of_kind(manifests, "NetworkPolicy")
    deployments = _of_kind(manifests, "Deployment")
    labels = {name: d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
              for name, d in deployments.items()}
    internal = policies["hfx-internal-only"]["spec"]
    (expr,) = internal["podSelector"]["matchExpressions"]
    assert expr == {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["router"]}
    assert internal["ingress"] == [{"from": [{"podSelector": {}}]}]   # same namespace only
    assert "router" in labels.values() and len(set(labels.values())) > 1
    public = policies["hfx-router-public"]["spec"]
    assert public["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "router"}
    router_ports = {p["containerPort"] for c in deployments["router"]["spec"]["template"]["spec"]["containers"]
                    for p in c["ports"]}
    assert {p["port"] for rule in public["ingress"] for p in rule["ports"]} == router_ports


def test_compose_and_k8s_redis_require_the_password_secret(manifests):
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    assert "hfx_redis_password" in redis["secrets"] and "requirepass" in " ".join(redis["command"])
    for name, svc in compose["services"].items():
        if "hfx_internal_token" in svc.get("secrets", []):
            assert "hfx_redis_password" in svc["secrets"], name
    k8s_redis = _of_kind(manifests, "Deployment")["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert "requirepass" in " ".join(k8s_redis["command"])
    config = _of_kind(manifests, "ConfigMap")
    assert any("HFX_REDIS_PASSWORD_FILE" in c.get("data", {}) for c in config.values())


def _allows(rules: list[dict], group: str, resource: str, verb: str, name: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and ("resourceNames" not in r or name in r["resourceNames"]) for r in rules)


def test_k8s_scaler_autoscales_the_worker_deployment_with_just_the_rights_it_needs(manifests, parser):
    from services.scaler.autoscale_cli import k8s_target

    deployments = _of_kind(manifests, "Deployment")
    pod = deployments["scaler"]["spec"]["template"]["spec"]
    args = _parse(parser, pod["containers"][0]["args"], "k8s Deployment scaler")
    assert args.check(args) is None   # the cross-flag checks `hfx scaler` runs before it starts
    assert args.autoscale and args.actuator == "kubernetes" and args.replicas == 0
    assert args.scheduler_metrics == f"scheduler:{METRICS_PORTS['scheduler']}"
    assert args.router_metrics == f"router:{METRICS_PORTS['router']}"
    namespace, name = k8s_target(args)
    worker = deployments[name]
    assert worker["metadata"]["namespace"] == namespace and args.command == "scaler"
    assert "replicas" not in worker["spec"], "re-applying the manifests would reset the autoscaled count"

    account = pod["serviceAccountName"]
    assert account in _of_kind(manifests, "ServiceAccount")
    (binding,) = [b for b in _of_kind(manifests, "RoleBinding").values()
                  if {"kind": "ServiceAccount", "name": account, "namespace": namespace} in b["subjects"]]
    assert binding["roleRef"]["kind"] == "Role" and binding["metadata"]["namespace"] == namespace
    rules = _of_kind(manifests, "Role")[binding["roleRef"]["name"]]["rules"]
    for group, resource, verb in (("apps", "deployments", "get"), ("apps", "deployments/scale", "get"),
                                  ("apps", "deployments/scale", "patch"), ("", "pods", "list"),
                                  ("", "pods", "patch"), ("", "pods", "delete")):
        assert _allows(rules, group, resource, verb, name), (group, resource, verb)
    # Nothing more: not another Deployment, no pod creation, no secrets, no wildcards.
    assert not _allows(rules, "apps", "deployments/scale", "patch", "router")
    assert not _allows(rules, "", "pods", "create", name) and not _allows(rules, "", "secrets", "get", "x")
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in rules)
    assert not _of_kind(manifests, "ClusterRole") and not _of_kind(manifests, "ClusterRoleBinding")
