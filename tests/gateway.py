"""Run a real s3latent gateway process for tests, on a free loopback port."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s3latent.bench.servers import GatewayServer, free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"

__all__ = ["ACCESS_KEY", "SECRET_KEY", "GatewayProcess", "free_port"]


class GatewayProcess(GatewayServer):
    """The package's gateway launcher with the tests' credentials and client helpers."""

    def __init__(self, backend: str, workdir: Path, *, config: str | None = None,
                 backend_keys: tuple[str, str] | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, name: str | None = None,
                 tls_ca: Path | None = None) -> None:
        super().__init__(backend, workdir, backend_keys=backend_keys, access_key=ACCESS_KEY,
                         secret_key=SECRET_KEY, config_text=config, extra_args=extra_args,
                         env=env, port=port, name=name, tls_ca=tls_ca)

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        super().start(timeout)
        return self

    def kill(self) -> None:
        """A crash: SIGKILL, no cleanup."""
        self.stop(signal.SIGKILL)

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
            verify=str(self.tls_ca) if self.tls_ca else None,
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
        if self.tls_ca is not None:  # HTTPS with the test's own CA
            env["AWS_CA_BUNDLE"] = str(self.tls_ca)
        return env


def on_backend(request: Any, workdir: Path, **kw: Any) -> GatewayProcess:
    """A gateway (not started) on the backend a fixture's `request.param` names: "local",
    the embedded directory under `workdir`, or "seaweedfs", the session's SeaweedFS."""
    if request.param == "local":
        return GatewayProcess(f"file://{workdir / 'data'}", workdir, **kw)
    weed = request.getfixturevalue("seaweedfs")
    return GatewayProcess(weed.endpoint, workdir,
                          backend_keys=(weed.access_key, weed.secret_key), **kw)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s3latent test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def https_on_backend(request: Any, workdir: Path, **kw: Any) -> GatewayProcess:
    """on_backend, serving HTTPS with a certificate of its own (clients trust its CA):
    SSE-C keys never travel in cleartext (docs/transport.md)."""
    cert, key = self_signed(workdir)
    return on_backend(request, workdir, tls_ca=cert,
                      config=f'[server]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n',
                      **kw)
