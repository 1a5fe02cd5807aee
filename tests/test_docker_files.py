"""Static checks of docker/: there is no Docker engine in CI, so the files are validated.

The compose file is parsed and its wiring checked (services, health checks, volumes, the
gateway's backend credentials equal MinIO's, ports); the Dockerfile's instructions are parsed
and checked (base image from a build argument, pinned torch from the CPU index, non-root user,
health check, the serve entrypoint); the health-check commands are run against a local HTTP
server; `docker compose config` runs too where a compose client is installed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
DOCKERFILE = DOCKER / "Dockerfile"

HAPROXY = DOCKER / "haproxy.cfg"
GATEWAYS = ("s3latent-1", "s3latent-2", "s3latent-3")
SERVICES = {"minio", "lb", *GATEWAYS}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR} / ${VAR:-default} substitution, enough to check the wiring."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _args(instructions: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in instructions if word == name]


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for rest in _args(instructions, "ARG"):
        key, _, value = rest.partition("=")
        defaults[key] = value
    return defaults


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("H", (_Health,), {"status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _run_health_cmd(argv: list[str], port: int) -> int:
    """Run a container health check here, aimed at the test server instead of :9000."""
    assert argv[0] == "python"
    argv = [sys.executable] + [a.replace(":9000", f":{port}") for a in argv[1:]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


# ---------------------------------------------------------------- compose


def test_compose_services_images_and_dependencies() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == SERVICES
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:")
    assert not minio["image"].endswith(":latest"), "pin the MinIO release"
    assert minio["command"][:2] == ["server", "/data"]
    for name in GATEWAYS:
        gw = services[name]
        assert gw["depends_on"]["minio"]["condition"] == "service_healthy"
        build = gw["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["args"]["TORCH_VERSION"] == "2.13.0"
        assert build["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:") and not lb["image"].endswith(":latest")
    assert set(lb["depends_on"]) == set(GATEWAYS)


def test_compose_backend_is_minio_with_its_credentials() -> None:
    """s3latent's backend URL names the MinIO service and uses the MinIO root keys."""
    for env in (
        {},
        {
            "MINIO_ROOT_USER": "alice",
            "MINIO_ROOT_PASSWORD": "s3cr3t-password",
            "S3LATENT_ACCESS_KEY": "client",
            "S3LATENT_SECRET_KEY": "client-secret",
        },
    ):
        services = load_compose(env)["services"]
        for name in GATEWAYS:
            minio_env, gw_env = services["minio"]["environment"], services[name]["environment"]
            cmd = services[name]["command"]
            assert cmd[cmd.index("--backend") + 1] == "http://minio:9000"
            assert gw_env["S3LATENT_BACKEND_ACCESS_KEY"] == minio_env["MINIO_ROOT_USER"]
            assert gw_env["S3LATENT_BACKEND_SECRET_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
            assert len(minio_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter passwords"
            assert gw_env["S3LATENT_ACCESS_KEY"] and gw_env["S3LATENT_SECRET_KEY"]
            if env:
                assert gw_env["S3LATENT_ACCESS_KEY"] == "client"
                assert minio_env["MINIO_ROOT_USER"] == "alice"
            config_path = cmd[cmd.index("--config") + 1]
            mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
            assert (COMPOSE.parent / mounts[config_path]).resolve() == DOCKER / "config.toml"


def test_compose_healthchecks(health_server: tuple[int, type[_Health]]) -> None:
    services = load_compose()["services"]
    for name in ("minio", *GATEWAYS):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert check["retries"] >= 3 and check["interval"] and check["timeout"]
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]
    port, handler = health_server
    gw_test = services["s3latent-1"]["healthcheck"]["test"]
    assert "/health" in " ".join(gw_test)
    assert _run_health_cmd(gw_test[1:], port) == 0
    handler.status = 503
    assert _run_health_cmd(gw_test[1:], port) != 0


def test_compose_volumes_and_ports() -> None:
    compose = load_compose()
    services = compose["services"]
    named = set(compose["volumes"])
    used = set()
    for svc in services.values():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, f"volume {source} is not declared"
                used.add(source)
    assert used == named == {"minio-data", "s3latent-data"}
    assert "minio-data:/data" in services["minio"]["volumes"]
    assert all("s3latent-data:/data" in services[name]["volumes"] for name in GATEWAYS)

    def published(svc: dict[str, Any]) -> dict[str, str]:
        out = {}
        for p in svc.get("ports", []):
            parts = str(p).split(":")
            out[parts[-1]] = ":".join(parts[:-1])
        return out

    lb_ports = published(services["lb"])
    assert lb_ports["9000"].endswith("9000")
    assert all(not services[name].get("ports") for name in GATEWAYS), \
        "clients reach the nodes through the load balancer"
    minio_ports = published(services["minio"])
    assert "9000" not in minio_ports, "MinIO's API stays private to the compose network"
    assert all(host.startswith("127.0.0.1:") for host in minio_ports.values())


def test_gpu_override_reserves_a_gpu_and_builds_cuda(instructions: list[tuple[str, str]]) -> None:
    override = yaml.safe_load(COMPOSE_GPU.read_text())
    assert set(override["services"]) == set(GATEWAYS)
    gw = override["services"]["s3latent-1"]
    devices = gw["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    args = gw["build"]["args"]
    assert set(args) <= set(_arg_defaults(instructions))
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert re.search(r"/whl/cu\d+$", args["TORCH_INDEX_URL"])


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if (
        legacy
        and subprocess.run([legacy, "version"], capture_output=True, timeout=30).returncode == 0
    ):
        return [legacy]
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_compose_config_with_the_compose_client(files: list[Path]) -> None:
    """The compose client's own validation; needs no engine. Skipped where none is installed."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose / docker-compose client installed")
    argv = [*cli, "--project-directory", str(DOCKER)]
    for f in files:
        argv += ["-f", str(f)]
    res = subprocess.run(
        [*argv, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load(res.stdout)
    assert set(rendered["services"]) == SERVICES
    if COMPOSE_GPU in files:
        assert rendered["services"]["s3latent-1"]["deploy"]["resources"]["reservations"]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_from_build_arg(instructions: list[tuple[str, str]]) -> None:
    froms = _args(instructions, "FROM")
    assert len(froms) == 1
    assert froms[0] in ("${BASE_IMAGE}", "$BASE_IMAGE")
    first_from = next(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    pre = [rest for w, rest in instructions[:first_from] if w == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim" in pre


def test_dockerfile_installs_pinned_cpu_torch_before_the_project(
    instructions: list[tuple[str, str]],
) -> None:
    defaults = _arg_defaults(instructions)
    assert defaults["TORCH_VERSION"] == "2.13.0"
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = _args(instructions, "RUN")
    torch_idx = next(i for i, r in enumerate(runs) if "torch==" in r)
    torch_run = runs[torch_idx]
    assert re.search(r'"?torch==\$\{?TORCH_VERSION\}?"?', torch_run)
    assert re.search(r'--index-url\s+"?\$\{?TORCH_INDEX_URL\}?"?', torch_run)
    for i, run in enumerate(runs):
        for packages in _pip_installs(run):
            for pkg in packages:
                if re.match(r"torch\b(?!vision|audio)", pkg):
                    assert re.fullmatch(r"torch==\$\{?TORCH_VERSION\}?", pkg), pkg
            if "." in packages:
                assert i > torch_idx, "the project must be installed after the pinned torch"


def _pip_installs(run: str) -> list[list[str]]:
    """The package arguments of each `pip install` in a RUN line."""
    out = []
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";", "||", "|"):
            segments.append([])
        else:
            segments[-1].append(token)
    for words in segments:
        for start in range(len(words) - 1):
            if words[start].endswith("pip") and words[start + 1] == "install":
                args, skip = [], False
                for w in words[start + 2 :]:
                    if skip:
                        skip = False
                    elif w in ("--index-url", "-i", "--extra-index-url", "-r", "-c"):
                        skip = True
                    elif not w.startswith("-"):
                        args.append(w)
                out.append(args)
                break
    return out


def test_dockerfile_runs_as_non_root_with_healthcheck_and_entrypoint(
    instructions: list[tuple[str, str]], health_server: tuple[int, type[_Health]]
) -> None:
    users = _args(instructions, "USER")
    assert users, "no USER instruction"
    last_user = users[-1].split(":")[0]
    assert last_user not in ("root", "0")
    last_user_idx = max(i for i, (w, _) in enumerate(instructions) if w == "USER")
    assert all(w != "RUN" for w, _ in instructions[last_user_idx:]), "RUN after USER"
    run_text = " ".join(_args(instructions, "RUN"))
    assert re.search(rf"useradd\b[^;&]*\b{re.escape(last_user)}\b", run_text)

    assert "9000" in " ".join(_args(instructions, "EXPOSE")).split()

    entry = json.loads(_args(instructions, "ENTRYPOINT")[-1])
    assert entry == ["s3latent", "serve", "--listen", "0.0.0.0:9000"]
    cmd = json.loads(_args(instructions, "CMD")[-1])
    assert cmd[cmd.index("--backend") + 1].startswith("file:///data")
    assert "/data" in " ".join(_args(instructions, "VOLUME"))

    health = _args(instructions, "HEALTHCHECK")[-1]
    options, _, check = health.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(check)
    port, handler = health_server
    assert _run_health_cmd(argv, port) == 0
    handler.status = 500
    assert _run_health_cmd(argv, port) != 0


def test_dockerfile_copies_existing_sources_and_config(
    instructions: list[tuple[str, str]],
) -> None:
    ignore = [
        ln.strip()
        for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied = []
    for rest in _args(instructions, "COPY"):
        parts = shlex.split(rest)
        assert not any(p.startswith("--from") for p in parts)
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} missing from the build context"
            for pat in ignore:
                assert not fnmatch.fnmatch(src, pat.lstrip("*/")), f"{src} is dockerignored"
            copied.append(src)
    assert {"pyproject.toml", "s3latent", "docker/config.toml"} <= set(copied)
    cmd = json.loads(_args(instructions, "CMD")[-1])
    config_dest = cmd[cmd.index("--config") + 1]
    assert any(shlex.split(r)[-1] == config_dest for r in _args(instructions, "COPY"))
    # the console script the entrypoint runs is declared by the project
    assert re.search(
        r'^s3latent\s*=\s*"s3latent\.cli:main"', (REPO / "pyproject.toml").read_text(), re.M
    )


def test_example_config_loads() -> None:
    """docker/config.toml is accepted by the gateway's own config and model loaders."""
    from s3latent.config import load_config

    cfg = load_config(DOCKER / "config.toml",
                      env={"S3LATENT_CLUSTER_SECRET": "a-cluster-secret-0123456789"})
    assert "taef2" in cfg.models
    assert cfg.bucket("anything").policy in ("perceptual", "exact")
    try:
        from s3latent.models.registry import ModelRegistry
    except ImportError:  # the registry is optional for this check
        return
    registry = ModelRegistry.from_config(cfg.models)
    assert "taef2" in registry


def test_parse_dockerfile_handles_continuations() -> None:
    parsed = parse_dockerfile("# c\nARG A=1\nRUN a \\\n  # inner comment\n  b\nUSER x\n")
    assert parsed == [("ARG", "A=1"), ("RUN", "a  b"), ("USER", "x")]


# ---------------------------------------------------------------- the cluster


def test_compose_cluster_wiring() -> None:
    """Every node is in [cluster] nodes under the name it is reached by, says which one it is
    (S3LATENT_CLUSTER_SELF), shares one secret from the environment (never the file), and is
    a server of the load balancer's round robin with a /health check."""
    from s3latent.config import ConfigError, load_config

    services = load_compose({"S3LATENT_CLUSTER_SECRET": "from-docker-env-0123456789"})["services"]
    text = (DOCKER / "config.toml").read_text()
    assert "secret" not in text.split("[cluster]", 1)[1].split("\n[", 1)[0].replace(
        "S3LATENT_CLUSTER_SECRET", "")
    with pytest.raises(ConfigError, match="S3LATENT_CLUSTER_SECRET"):
        load_config(DOCKER / "config.toml", env={})
    selves, secrets = [], set()
    for name in GATEWAYS:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        cfg = load_config(DOCKER / "config.toml", env=env)
        assert cfg.cluster is not None
        assert cfg.cluster.self == f"http://{name}:9000" and cfg.cluster.self in cfg.cluster.nodes
        selves.append(cfg.cluster.self)
        secrets.add(env["S3LATENT_CLUSTER_SECRET"])
        stop = services[name].get("stop_grace_period", "10s")
        assert int(stop.rstrip("s")) > cfg.shutdown_grace_s, "docker must outwait the grace"
    assert sorted(selves) == sorted(cfg.cluster.nodes) and secrets == {
        "from-docker-env-0123456789"}
    lb = services["lb"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in lb["volumes"]}
    assert (COMPOSE.parent / mounts["/usr/local/etc/haproxy/haproxy.cfg"]).resolve() == HAPROXY
    haproxy = [ln.split("#")[0].split() for ln in HAPROXY.read_text().splitlines()]
    haproxy = [words for words in haproxy if words]
    assert ["balance", "roundrobin"] in haproxy
    assert ["option", "httpchk", "GET", "/health"] in haproxy
    assert ["bind", ":9000"] in haproxy
    servers = {w[2] for w in haproxy if w[0] == "server" and "check" in w}
    assert servers == {f"{name}:9000" for name in GATEWAYS}
