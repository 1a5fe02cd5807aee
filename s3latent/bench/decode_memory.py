"""`s3latent bench decode-memory`: peak RSS and time of a decode, tiled vs untiled.

Each (size, mode) decode runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own:
the process loads the model (real TAEF2 weights by default), decodes one seeded N(0, 1)
latent of the size's shape (32 x size/8 x size/8) and writes the uint8 pixels; the parent
reports RSS (baseline after loading, peak), decode time and the PSNR between the tiled and
the untiled pixels of each size. Prints a table; `--json` writes it with the machine.

Tiled mode uses the tiling the gateway would record for a new conversion (`plan_tiling`
with the default [decode] settings) or, where that says untiled (small images), `--tile` /
`--overlap` forced, so every size compares a real tiled decode with the untiled one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "models" / "taef2"
DEFAULT_SIZES = (1024, 2048, 4096)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(args: argparse.Namespace) -> int:
    """Decode one latent; print a JSON line with the measurements."""
    import numpy as np
    import torch

    from ..config import DecodeSettings
    from ..decode.pipeline import pixels_to_uint8
    from ..models.tae import load_tae
    from ..models.tiling import Tiling, default_overlap, plan_tiling, planning_act_bytes_per_px

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_tae("taef2", Path(args.weights) / "taef2_decoder.pth", model_id="taef2")
    side = args.size // model.downscale
    z = torch.randn(1, model.latent_channels, side, side,
                    generator=torch.Generator().manual_seed(args.seed))
    baseline = _rss_mib()
    tiling = None
    planned = None
    if args.mode == "tiled":
        d = DecodeSettings()
        planned = plan_tiling(side, side, model.downscale, planning_act_bytes_per_px("tae"),
                              tile=d.tile_size, overlap=default_overlap("tae"),
                              budget=d.memory_budget)
        tiling = planned or Tiling(args.tile, args.overlap)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.decode(z) if tiling is None else model.decode_tiled(z, tiling)
        pixels = pixels_to_uint8(out)[0].numpy()
    seconds = time.perf_counter() - started
    peak = _rss_mib()
    np.save(args.out, pixels)
    print(json.dumps({"size": args.size, "mode": args.mode, "seconds": round(seconds, 2),
                      "baseline_rss_mib": round(baseline), "peak_rss_mib": round(peak),
                      "tiling": tiling.to_json() if tiling else None,
                      "planned_by_gateway": planned.to_json() if planned else None,
                      "threads": torch.get_num_threads()}))
    return 0


def _psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _run_one(size: int, mode: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "s3latent.bench.decode_memory", "--child", "--size", str(size),
           "--mode", mode, "--out", str(out), "--weights", str(args.weights),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"size": size, "mode": mode, "error": done.stderr.strip()[-500:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s3latent bench decode-memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="image sides in pixels, comma-separated")
    p.add_argument("--untiled-max", type=int, default=4096,
                   help="largest size also decoded untiled (untiled 4096² needs ~13 GB)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                   help="folder with taef2_decoder.pth")
    p.add_argument("--tile", type=int, default=64,
                   help="latent tile forced where the gateway would not tile")
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("tiled", "untiled"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if not (args.weights / "taef2_decoder.pth").is_file():
        print(f"no TAEF2 weights in {args.weights}", file=sys.stderr)
        return 2

    import numpy as np

    from .gateway_bench import machine_info

    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="s3l-decmem-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            pixels: dict[str, Any] = {}
            for mode in ("tiled", "untiled"):
                if mode == "untiled" and size > args.untiled_max:
                    continue
                out = Path(tmp) / f"{size}-{mode}.npy"
                row = _run_one(size, mode, out, args)
                if "error" not in row:
                    pixels[mode] = np.load(out)
                    out.unlink()
                rows.append(row)
                print(json.dumps(row), flush=True)
            if len(pixels) == 2:
                value = _psnr(pixels["tiled"], pixels["untiled"])
                for row in rows[-2:]:
                    row["psnr_tiled_vs_untiled_db"] = round(value, 2)
    print(f"\n{'size':>6} {'mode':>8} {'tiling':>12} {'seconds':>8} {'base MiB':>9} "
          f"{'peak MiB':>9} {'PSNR dB':>8}")
    for r in rows:
        t = r.get("tiling")
        print(f"{r['size']:>6} {r['mode']:>8} "
              f"{(str(t['tile']) + '/' + str(t['overlap'])) if t else '-':>12} "
              f"{r.get('seconds', 'err')!s:>8} {r.get('baseline_rss_mib', '-')!s:>9} "
              f"{r.get('peak_rss_mib', '-')!s:>9} {r.get('psnr_tiled_vs_untiled_db', '-')!s:>8}")
    if args.json:
        args.json.write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
            "command": "s3latent bench decode-memory " + " ".join(argv or sys.argv[1:]),
            "latent": "seeded N(0,1), 32 channels, size/8 per side", "rows": rows,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        }, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
