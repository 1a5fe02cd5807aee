"""`s3latent bench determinism`: are batched decodes byte-identical to single ones on a device?

For each batch size up to `--max-batch`, the same latents are decoded one at a time and as
one batch, through the model as registered (dtype, channels_last, the model's own batch
handling switched off so the raw kernels are compared) and through the gateway's decode
pipeline (which probes and falls back to single decodes where bytes differ). Prints a table;
`--json` writes it with the machine. Run it on each device kind renditions are served from
(the render profile names the device kind): CPU in CI, a GPU through the device tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..decode.pipeline import DevicePipeline, pick_devices, pixels_to_uint8


def _model(args: argparse.Namespace, device: torch.device) -> tuple[str, Any]:
    from ..models.registry import ModelRegistry

    if args.model_config:
        models = tomllib.loads(Path(args.model_config).read_text())["models"]
        model_id = next(iter(models))
        table = dict(models[model_id])
    else:
        model_id = "tiny"
        table = {"kind": "tae", "arch": "taesd", "random_weights": True}
    return model_id, ModelRegistry.from_config({model_id: table}).get(model_id, device)


def _raw(model: Any, latents: torch.Tensor) -> list[bytes]:
    """One forward pass over the whole batch, bypassing the model's batch invariance."""
    saved = getattr(model, "batch_invariant", False)
    model.batch_invariant = False
    try:
        with torch.inference_mode():
            out = pixels_to_uint8(model.decode(latents.to(model.device))).cpu().numpy()
    finally:
        model.batch_invariant = saved
    return [out[i].tobytes() for i in range(out.shape[0])]


async def _through_pipeline(model_id: str, model: Any, latents: torch.Tensor,
                            max_batch: int) -> tuple[bool, dict[str, bool]]:
    pipe = DevicePipeline(model.device, lambda m, d: model, max_batch=max_batch,
                          max_wait_ms=200)
    try:
        alone = [await pipe.decode(model_id, x) for x in latents[:max_batch]]
        batched = await asyncio.gather(*(pipe.decode(model_id, x) for x in latents[:max_batch]))
        same = all(a.tobytes() == b.tobytes() for a, b in zip(alone, batched, strict=True))
        probes = {f"{k[1]} x{k[3]}": v for k, v in pipe.stats.batch_invariance.items()}
        return same, probes
    finally:
        await pipe.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The table's rows for every device `--device` names."""
    rows = []
    for device in pick_devices(args.device):
        model_id, model = _model(args, device)
        side = args.size // model.downscale
        gen = torch.Generator().manual_seed(args.seed)
        latents = torch.randn(args.max_batch, model.latent_channels, side, side, generator=gen)
        singles = [_raw(model, latents[i : i + 1])[0] for i in range(args.max_batch)]
        repeat = [_raw(model, latents[i : i + 1])[0] for i in range(args.max_batch)]
        raw = {}
        for n in range(2, args.max_batch + 1):
            out = _raw(model, latents[:n])
            raw[n] = sum(a != b for a, b in zip(out, singles[:n], strict=True))
        pipeline_same, probes = asyncio.run(
            _through_pipeline(model_id, model, latents, args.max_batch))
        rows.append({
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu",
            "model": model_id,
            "dtype": str(model.dtype),
            "latent": [model.latent_channels, side, side],
            "single_repeatable": singles == repeat,
            "raw_batches_differing": {str(n): d for n, d in raw.items()},
            "model_batch_invariant": bool(getattr(model, "batch_invariant", False)),
            "pipeline_batched_equals_single": pipeline_same,
            "pipeline_probes": probes,
        })
    return {"rows": rows, "torch": torch.__version__}


def main(argv: Sequence[str] | None = None) -> int:
    """Print whether batching changes rendition bytes; nonzero exit if the pipeline's does."""
    ap = argparse.ArgumentParser(prog="s3latent bench determinism",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-config", help="TOML with one [models.X] table (default: tiny)")
    ap.add_argument("--device", default="auto", help="auto (every CUDA device, else cpu), cpu, "
                    "cuda:0, ...")
    ap.add_argument("--size", type=int, default=256, help="image side")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    report = run(args)
    for r in report["rows"]:
        print(f"{r['device']} ({r['device_name']}) {r['model']} {r['dtype']} latent {r['latent']}")
        print(f"  single decode repeatable: {r['single_repeatable']}")
        print(f"  raw batch vs single, images differing per batch size: "
              f"{r['raw_batches_differing']}")
        print(f"  model decodes one at a time itself: {r['model_batch_invariant']}")
        print(f"  pipeline batched == single: {r['pipeline_batched_equals_single']} "
              f"(probes: {r['pipeline_probes'] or 'none'})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    ok = all(r["single_repeatable"] and r["pipeline_batched_equals_single"]
             for r in report["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

