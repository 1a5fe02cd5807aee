"""AVIF as a stored representation: the decoder is deterministic, the search is faithful."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from s3latent.latent import avif
from s3latent.latent.fidelity import psnr

pytestmark = pytest.mark.skipif(not avif.available(), reason="Pillow without AVIF/dav1d")


def _picture(size: int = 256, seed: int = 0) -> np.ndarray:
    """Gradients, edges and noise: something every quality level changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    px = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x ^ y) % 256], -1)
    px[size // 4: size // 2, size // 4: size // 2] = (250, 20, 30)
    return (px + rng.integers(0, 12, px.shape)).clip(0, 255).astype(np.uint8)


def test_decoder_is_pinned_and_versioned() -> None:
    version = avif.decoder_version()
    assert version.startswith("libavif-") and "/dav1d-" in version and "/pillow-" in version


def test_decode_is_bit_exact_across_repeats_threads_and_processes(tmp_path) -> None:
    pixels = _picture(384)
    payloads = [avif.encode(pixels, avif.AvifParams(q)) for q in (20, 55, 90)]
    for i, payload in enumerate(payloads):
        (tmp_path / f"{i}.avif").write_bytes(payload)
    here = [[avif.pixels_digest(avif.decode(p, threads)) for threads in (1, 2, 4, 8, 1)]
            for p in payloads]
    for digests in here:
        assert len(set(digests)) == 1, digests
    # A fresh interpreter (nothing of this process's state) decodes the same pixels.
    code = ("import json,sys,pathlib; from s3latent.latent import avif; "
            "print(json.dumps([avif.pixels_digest(avif.decode(pathlib.Path(sys.argv[1], "
            "f'{i}.avif').read_bytes(), 3)) for i in range(3)]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [d[0] for d in here]
    # Different payloads really do decode differently (the digests can tell them apart).
    assert len({d[0] for d in here}) == 3


def test_coarsest_meets_the_target_and_is_coarser_than_lossless_ish() -> None:
    pixels = _picture(256, seed=3)
    target = 38.0
    found = avif.coarsest(pixels, lambda _data, decoded: psnr(decoded, pixels) >= target)
    assert found is not None
    data, params = found
    assert psnr(avif.decode(data), pixels) >= target
    assert params.quality < 100
    # One step coarser fails (the search stops at the boundary it measured).
    coarser = avif.decode(avif.encode(pixels, avif.AvifParams(params.quality - 1)))
    assert psnr(coarser, pixels) < target


def test_coarsest_none_when_nothing_meets_the_policy() -> None:
    pixels = _picture(64, seed=4)
    assert avif.coarsest(pixels, lambda _data, _decoded: False) is None


def test_render_profile_names_the_avif_decoder() -> None:
    from s3latent.latent.rendition import RenderSettings, avif_render_profile

    profile = avif_render_profile(RenderSettings("PNG"), avif.decoder_version())
    assert profile.startswith("avif/dav1d-")
    other = avif_render_profile(RenderSettings("PNG"), "libavif-0/dav1d-0/pillow-0")
    assert other != profile  # another decoder build is another profile
