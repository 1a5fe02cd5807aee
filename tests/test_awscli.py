"""The AWS CLI against the gateway, on both backends: mb, cp, ls, sync, rm, presign, rb."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from s3latent.executables import require_executable
from tests.gateway import GatewayProcess, https_on_backend

AWS = require_executable("aws", "awscli")


def aws(gateway: GatewayProcess, home: Path, *args: str, check: bool = True,
        extra_config: str = "") -> subprocess.CompletedProcess[str]:
    config = home / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n" + extra_config)
    result = subprocess.run(
        [AWS, "--endpoint-url", gateway.endpoint, *args],
        env=gateway.cli_env(home), capture_output=True, text=True, timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
                             f"\n--- gateway log ---\n{gateway.log()}")
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.mark.parametrize("checksums", ["default", "when_required"])
def test_cli_workflow(gateway: GatewayProcess, home: Path, tmp_path: Path,
                      checksums: str) -> None:
    extra = ""
    if checksums == "when_required":
        extra = "request_checksum_calculation = when_required\n" \
                "response_checksum_validation = when_required\n"
    name = f"cli-{uuid.uuid4().hex[:10]}"
    run = lambda *a, **k: aws(gateway, home, *a, extra_config=extra, **k)  # noqa: E731
    run("s3", "mb", f"s3://{name}")

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(20 * 1024 * 1024 + 123)
    (src / "big.bin").write_bytes(big)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    (src / "sub" / "space name.txt").write_text("gamma")

    run("s3", "cp", str(src / "big.bin"), f"s3://{name}/big.bin")
    down = tmp_path / "down.bin"
    run("s3", "cp", f"s3://{name}/big.bin", str(down))
    assert down.read_bytes() == big

    out = run("s3", "sync", str(src), f"s3://{name}/tree").stdout
    assert out.count("upload:") == 4
    # A second sync sees nothing changed.
    assert "upload:" not in run("s3", "sync", str(src), f"s3://{name}/tree").stdout

    listing = run("s3", "ls", f"s3://{name}/tree/", "--recursive").stdout
    sizes = {line.split()[-1]: int(line.split()[2]) for line in listing.splitlines()}
    assert sizes["tree/big.bin"] == len(big)
    assert sizes["tree/a.txt"] == 5
    assert "tree/sub/space" in listing
    top = run("s3", "ls", f"s3://{name}/").stdout
    assert "PRE tree/" in top and "big.bin" in top

    back = tmp_path / "back"
    run("s3", "sync", f"s3://{name}/tree", str(back))
    assert (back / "sub" / "space name.txt").read_text() == "gamma"
    assert (back / "big.bin").read_bytes() == big

    url = run("s3", "presign", f"s3://{name}/tree/a.txt", "--expires-in", "120").stdout.strip()
    assert requests.get(url, timeout=10).text == "alpha"

    run("s3", "rm", f"s3://{name}/tree/a.txt")
    assert "a.txt" not in run("s3", "ls", f"s3://{name}/tree/").stdout
    bad = run("s3", "rb", f"s3://{name}", check=False)
    assert bad.returncode != 0 and "BucketNotEmpty" in bad.stderr
    run("s3", "rm", f"s3://{name}", "--recursive")
    run("s3", "rb", f"s3://{name}")
    assert name not in run("s3", "ls").stdout


def test_cli_s3api_errors(gateway: GatewayProcess, home: Path) -> None:
    result = aws(gateway, home, "s3api", "head-object", "--bucket", "no-such-bucket-x",
                 "--key", "k", check=False)
    assert result.returncode != 0 and "404" in result.stderr
    result = aws(gateway, home, "s3api", "create-bucket", "--bucket", "Bad_Name", check=False)
    assert "InvalidBucketName" in result.stderr


def test_cli_wrong_secret(gateway: GatewayProcess, home: Path) -> None:
    env: dict[str, Any] = gateway.cli_env(home)
    env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    (home / "aws-config").write_text("[default]\nregion = us-east-1\n")
    result = subprocess.run([AWS, "--endpoint-url", gateway.endpoint, "s3", "ls"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SignatureDoesNotMatch" in result.stderr


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def https_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[GatewayProcess]:
    """A gateway serving HTTPS with its own certificate: SSE-C keys never travel in
    cleartext (over plain HTTP they answer 400, as on S3; docs/transport.md)."""
    proc = https_on_backend(request, tmp_path_factory.mktemp(f"cli-tls-{request.param}"))
    proc.start()
    yield proc
    proc.stop()


def test_cli_server_side_encryption(https_gateway: GatewayProcess, home: Path,
                                    tmp_path: Path) -> None:
    """`aws s3 cp --sse-c/--sse` over HTTPS: multipart uploads with the key on every part,
    parallel ranged downloads, listings with plaintext sizes (docs/encryption.md)."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    run = lambda *a, **k: aws(https_gateway, home, *a, **k)  # noqa: E731
    run("s3", "mb", f"s3://{name}")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 5))
    key = ["--sse-c", "AES256", "--sse-c-key", "0123456789abcdef0123456789abcdef"]
    run("s3", "cp", str(src), f"s3://{name}/c.bin", *key)
    run("s3", "cp", f"s3://{name}/c.bin", str(tmp_path / "c.out"), *key)
    assert (tmp_path / "c.out").read_bytes() == src.read_bytes()
    run("s3", "cp", str(src), f"s3://{name}/s.bin", "--sse", "AES256")
    run("s3", "cp", f"s3://{name}/s.bin", str(tmp_path / "s.out"))
    assert (tmp_path / "s.out").read_bytes() == src.read_bytes()
    listing = run("s3", "ls", f"s3://{name}/").stdout
    assert listing.count(f" {src.stat().st_size} ") == 2, listing
    assert run("s3", "cp", f"s3://{name}/c.bin", str(tmp_path / "x"), check=False
               ).returncode != 0  # no key, no bytes
    run("s3", "rb", f"s3://{name}", "--force")
