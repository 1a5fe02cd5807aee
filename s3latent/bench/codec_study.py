"""Codec study: bytes vs image fidelity of each latent codec on real TAEF2 latents.

Why: the codec choice is a storage/fidelity trade; this measures it the way admission does
(image PSNR of the decoded latent against the image decoded from the unquantised latent).

    python -m s3latent.bench.codec_study run CORPUS_DIR [--names a_512,b_1024] [--json OUT]
    python -m s3latent.bench.codec_study calibrate CORPUS_DIR --names coffee_512,chelsea_512

CORPUS_DIR is what ``python -m s3latent.bench.corpus`` writes (PNG, JPEG q90, sidecar per item).
``calibrate`` prints per-channel decoder sensitivities for ``codec.CHANNEL_WEIGHTS``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from s3latent.latent.codec import dtype_name, encode_to_target, get_codec
from s3latent.latent.sidecar import parse_sidecar

from .host import cpu_model

CODECS = ("lossless", "q8", "q4", "q8p", "q6p", "q4p", "q3p")
AUTO_TARGET = 40.5  # dB: the 40 dB admission default plus a margin


def _decoder(model_dir: Path | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from s3latent.bench.corpus import default_model_dir
    from s3latent.models.tae import load_tae

    d = Path(model_dir) if model_dir else default_model_dir()
    model = load_tae(
        "taef2", d / "taef2_decoder.pth", d / "taef2_encoder.pth", device="cpu", model_id="taef2"
    )

    @torch.no_grad()
    def render(latent: torch.Tensor) -> torch.Tensor:
        return model.decode(latent[None].float())[0].clamp(0, 1).mul(255).round()

    return render


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two uint8-valued float images (inf when identical)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _decode_ms(codec, payload: bytes, params: dict, shape: tuple, dt: str) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        codec.decode(payload, params, shape, dt)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def run(corpus: Path, names: Sequence[str] | None, model_dir: Path | None) -> dict:
    """Measure every codec (and auto) on each corpus item; returns rows + machine info."""
    torch.set_num_threads(1)
    render = _decoder(model_dir)
    index = json.loads((corpus / "index.json").read_text())
    rows = []
    for item in index:
        if names and item["name"] not in names:
            continue
        sc = parse_sidecar(Path(item["latent"]).read_bytes())
        x, shape, dt = sc.latent, tuple(sc.latent.shape), dtype_name(sc.latent.dtype)
        ref = render(x)
        row = {"name": item["name"], "png": item["png_bytes"], "jpeg90": item["jpeg_bytes"]}
        for name in CODECS:
            codec = get_codec(name, model="taef2")
            payload, params = codec.encode(x)
            y = codec.decode(payload, params, shape, dt)
            row[name] = {
                "bytes": len(payload),
                "psnr": round(psnr(render(y), ref), 2),
                "decode_ms": round(_decode_ms(codec, payload, params, shape, dt), 1),
            }
        codec = get_codec("q4p", model="taef2")
        payload, params, score = encode_to_target(
            codec, x, lambda y, ref=ref: psnr(render(y), ref), AUTO_TARGET
        )
        row["auto"] = {"bytes": len(payload), "psnr": round(score, 2), "step": params["step"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''} {cpu_model()}".strip(),
        "threads": 1,
        "torch": torch.__version__,
        "rows": rows,
    }


def calibrate(corpus: Path, names: Sequence[str], model_dir: Path | None) -> list[float]:
    """Image MSE per unit of white latent noise, per channel, normalised to geometric mean 1."""
    render = _decoder(model_dir)
    tot: np.ndarray | None = None
    for name in names:
        x = parse_sidecar((corpus / f"{name}.latent.safetensors").read_bytes()).latent.float()
        ref = render(x)
        c, h, w = x.shape
        tot = np.zeros(c) if tot is None else tot
        for ch in range(c):
            e = torch.zeros_like(x)
            g = torch.Generator().manual_seed(ch)
            e[ch] = (torch.rand(h, w, generator=g) - 0.5) * 0.3
            tot[ch] += float((render(x + e) - ref).pow(2).mean()) / (0.3**2 / 12) / len(names)
    assert tot is not None
    gm = float(np.exp(np.log(tot).mean()))
    return [round(float(v / gm), 4) for v in tot]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "calibrate"])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--names", default="")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [n for n in args.names.split(",") if n]
    if args.command == "calibrate":
        print(json.dumps(calibrate(args.corpus, names, args.model_dir)))
        return 0
    result = run(args.corpus, names or None, args.model_dir)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
