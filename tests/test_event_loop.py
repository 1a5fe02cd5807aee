"""The server's event loop switch: config, environment, flag, and a gateway on each loop."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3latent.cli import event_loop_factory
from s3latent.config import ConfigError, load_config

from .gateway import GatewayProcess

has_uvloop = importlib.util.find_spec("uvloop") is not None


def test_config_default_file_env_and_flag(tmp_path: Path) -> None:
    assert load_config(env={}).event_loop == "asyncio"
    conf = tmp_path / "c.toml"
    conf.write_text('[server]\nevent_loop = "auto"\n')
    assert load_config(conf, env={}).event_loop == "auto"
    assert load_config(conf, env={"S3LATENT_EVENT_LOOP": "UVLoop"}).event_loop == "uvloop"
    flagged = load_config(conf, env={"S3LATENT_EVENT_LOOP": "uvloop"}, event_loop="asyncio")
    assert flagged.event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop must be one of asyncio, uvloop, auto"):
        load_config(env={"S3LATENT_EVENT_LOOP": "trio"})


def test_factory_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop_factory("uvloop")


@pytest.mark.skipif(not has_uvloop, reason="uvloop not installed")
def test_factory_with_uvloop() -> None:
    import uvloop

    for choice in ("uvloop", "auto"):
        factory = event_loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    assert event_loop_factory("asyncio") is None


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_gateway_serves_on_the_chosen_loop(tmp_path: Path, choice: str) -> None:
    if choice == "uvloop" and not has_uvloop:
        pytest.skip("uvloop not installed")
    backend = f"file://{tmp_path / 'data'}"
    args = [] if choice == "asyncio" else ["--event-loop", choice]  # asyncio: the default
    with GatewayProcess(backend, tmp_path, extra_args=args) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="loops")
        body = os.urandom(300_000)
        s3.put_object(Bucket="loops", Key="k", Body=body)
        assert s3.get_object(Bucket="loops", Key="k")["Body"].read() == body
        assert f"event loop {choice}" in gw.log()


def test_serve_refuses_uvloop_when_missing(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "fake"), *filter(None, [os.environ.get("PYTHONPATH")])]
    ))
    out = subprocess.run(
        [sys.executable, "-m", "s3latent", "serve", "--listen", "127.0.0.1:0",
         "--backend", f"file://{tmp_path / 'data'}", "--event-loop", "uvloop"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "uvloop is not installed" in out.stderr
