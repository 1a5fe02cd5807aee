"""Latent objects with the AWS CLI: a folder of generated images and sidecars synced up,
converted, synced again (nothing to upload), listed, and downloaded back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from s3latent.latent.fidelity import decode_image_bytes, psnr
from tests.gateway import GatewayProcess
from tests.test_awscli import aws
from tests.test_latent_objects import _config, make_pair, tiny_model  # noqa: F401


def test_aws_s3_sync_of_generated_images(tiny_model: dict[str, str],  # noqa: F811
                                         tmp_path: Path) -> None:
    gw = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path, config=_config(tiny_model))
    gw.start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        src = tmp_path / "gen"
        src.mkdir()
        pixels: dict[str, np.ndarray] = {}
        for i in range(3):
            image, sidecar, px = make_pair(tiny_model, seed=20 + i)
            (src / f"img{i}.png").write_bytes(image)
            (src / f"img{i}.png.latent.safetensors").write_bytes(sidecar)
            pixels[f"img{i}.png"] = px
        bucket = f"sync-{uuid.uuid4().hex[:8]}"
        aws(gw, home, "s3", "mb", f"s3://{bucket}")
        out = aws(gw, home, "s3", "sync", str(src), f"s3://{bucket}/gen").stdout
        assert out.count("upload:") == 6
        s3: Any = gw.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reps = [s3.head_object(Bucket=bucket, Key=f"gen/img{i}.png")["ResponseMetadata"]
                    ["HTTPHeaders"]["x-s3latent-representation"] for i in range(3)]
            if all(r == "latent" for r in reps):
                break
            time.sleep(0.3)
        assert all(r == "latent" for r in reps)
        # Same sizes as the local files: a second sync uploads nothing.
        again = aws(gw, home, "s3", "sync", str(src), f"s3://{bucket}/gen").stdout
        assert "upload:" not in again
        listing = aws(gw, home, "s3", "ls", f"s3://{bucket}/gen/").stdout
        for line in listing.splitlines():
            size, name = int(line.split()[2]), line.split()[3]
            assert size == (src / name).stat().st_size
        back = tmp_path / "back"
        aws(gw, home, "s3", "sync", f"s3://{bucket}/gen", str(back))
        for name, px in pixels.items():
            data = (back / name).read_bytes()
            assert len(data) == (src / name).stat().st_size
            assert psnr(decode_image_bytes(data)[0], px) >= 40.0
            assert (back / f"{name}.latent.safetensors").stat().st_size == \
                (src / f"{name}.latent.safetensors").stat().st_size
    finally:
        gw.stop()
