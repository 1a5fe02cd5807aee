"""Run a real s3latent gateway process for tests, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config as BotoConfig

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """`python -m s3latent serve` in a subprocess; logs go to a file."""

    def __init__(self, backend: str, workdir: Path, *, config: str | None = None,
                 backend_keys: tuple[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.backend = backend
        self.workdir = workdir
        self.config_text = config
        self.backend_keys = backend_keys
        self.extra_args = extra_args or []
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"gateway-{uuid.uuid4().hex[:6]}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.port = free_port()
        env = dict(os.environ)
        env.update(S3LATENT_ACCESS_KEY=ACCESS_KEY, S3LATENT_SECRET_KEY=SECRET_KEY,
                   PYTHONUNBUFFERED="1")
        if self.backend_keys:
            env["S3LATENT_BACKEND_ACCESS_KEY"], env["S3LATENT_BACKEND_SECRET_KEY"] = (
                self.backend_keys
            )
        args = [sys.executable, "-m", "s3latent", "serve", "--listen",
                f"127.0.0.1:{self.port}", "--backend", self.backend, *self.extra_args]
        if self.config_text is not None:
            cfg = self.workdir / f"config-{self.port}.toml"
            cfg.write_text(self.config_text)
            args += ["--config", str(cfg)]
        log = open(self.log_path, "ab")  # handed to the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                if requests.get(self.endpoint + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL, no cleanup."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def client(self, **config: Any) -> Any:
        """boto3 S3 client with the SDK's default settings unless overridden."""
        cfg = BotoConfig(s3={"addressing_style": config.pop("addressing_style", "path")},
                         retries={"max_attempts": config.pop("max_attempts", 2)}, **config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=cfg,
        )

    def cli_env(self, home: Path) -> dict[str, str]:
        """Environment for the AWS CLI aimed at this gateway (no user config read)."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_CONFIG_FILE=str(home / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
            HOME=str(home),
        )
        env.pop("AWS_PROFILE", None)
        return env
