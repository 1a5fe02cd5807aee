"""Storage benchmark: generated images stored through the gateway, bytes and fidelity per codec.

A corpus of generated images (natural photographs encoded and decoded with
TAEF2, `s3latent.bench.corpus`) is uploaded with its sidecars through a
gateway over SeaweedFS, one bucket per codec. Once converted, the PHYSICAL
bytes each image takes in SeaweedFS (container + sidecar stub, read directly
from SeaweedFS) are compared with the PNG and the JPEG q90 originals, and the
image read back through the gateway is compared with the uploaded PNG.

What converting cost is measured per codec and image size (each size's pairs are uploaded and
waited for as one group): model decodes per admission and decode seconds (the gateway's
`s3latent_decode_batch_*` metrics), CPU seconds of the gateway process and wall seconds per
image, and images per second with `--jobs N` conversions at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from ..latent.fidelity import decode_image_bytes, psnr, ssim
from .corpus import default_model_dir, make_corpus
from .servers import GatewayServer, SeaweedServer

SUFFIX = ".latent.safetensors"


def _client(endpoint: str, key: str, secret: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1")


def run(codecs: list[str], sizes: list[int], count: int, model_dir: Path, workdir: Path,
        log: Any = print, jobs: int = 1) -> dict[str, Any]:
    """Bytes and fidelity per codec, and what converting cost, per codec and image size.

    Each (codec, size) group is uploaded and waited for on its own, so the gateway's decode
    count, decode time and process CPU time between its first upload and its last conversion
    belong to that group's admissions; `jobs` conversions run at once (conversion_workers).
    """
    items = make_corpus(workdir / "corpus", sizes=tuple(sizes), count=count,
                        model_dir=model_dir)
    log(f"corpus: {len(items)} images ({', '.join(i.name for i in items)})")
    config = workdir / "config.toml"
    tables = [f'[models.taef2]\nkind = "tae"\ndecoder = "{model_dir / "taef2_decoder.pth"}"\n',
              f"[server]\nconversion_workers = {jobs}\n"]
    tables += [f'[buckets."st-{c}"]\ncodec = "{c}"\n' for c in codecs]
    config.write_text("\n".join(tables))
    results: dict[str, Any] = {"codecs": {}, "images": [i.name for i in items], "jobs": jobs}
    with SeaweedServer() as weed, GatewayServer(
            weed.endpoint, workdir, backend_keys=(weed.access_key, weed.secret_key),
            extra_args=["--config", str(config)]) as gw:
        s3 = _client(gw.endpoint, gw.access_key, gw.secret_key)
        direct = _client(weed.endpoint, weed.access_key, weed.secret_key)
        for codec in codecs:
            bucket = f"st-{codec}"
            s3.create_bucket(Bucket=bucket)
            started = time.monotonic()
            rows, cost = [], {}
            for size in sorted({i.size for i in items}):
                group = [i for i in items if i.size == size]
                states, cost[str(size)] = _convert(s3, gw, bucket, group)
                for item, state in zip(group, states, strict=True):
                    rows.append(_row(s3, direct, bucket, item, state))
                log(f"{codec} {size}: {json.dumps(cost[str(size)])}")
            seconds = time.monotonic() - started
            latent_rows = [r for r in rows if r["state"] == "latent"]
            summary = _summary(latent_rows, rows)
            summary["seconds"] = round(seconds, 1)
            results["codecs"][codec] = {"summary": summary, "conversion": cost, "rows": rows}
            log(f"{codec}: {json.dumps(summary)}")
    results["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                          "cpus": os.cpu_count()}
    return results


def _convert(s3: Any, gw: GatewayServer, bucket: str, group: list[Any]
             ) -> tuple[list[str], dict[str, Any]]:
    """Upload a group of pairs and wait for all of them; (states, what converting cost)."""
    before, cpu0, wall0 = _metrics(gw.endpoint), _cpu_seconds(gw.pid), time.monotonic()
    for item in group:
        s3.put_object(Bucket=bucket, Key=item.png.name, Body=item.png.read_bytes(),
                      ContentType="image/png")
        s3.put_object(Bucket=bucket, Key=item.png.name + SUFFIX, Body=item.latent.read_bytes())
    states = [_wait(s3, bucket, item.png.name) for item in group]
    wall = time.monotonic() - wall0
    cpu = _cpu_seconds(gw.pid) - cpu0
    after = _metrics(gw.endpoint)
    n = len(group)
    decodes = after.get("s3latent_decode_batch_size_sum", 0) - before.get(
        "s3latent_decode_batch_size_sum", 0)
    decode_s = after.get("s3latent_decode_batch_seconds_sum", 0) - before.get(
        "s3latent_decode_batch_seconds_sum", 0)
    return states, {
        "images": n,
        "decodes_per_admission": round(decodes / n, 2),
        "cpu_s_per_image": round(cpu / n, 2),  # the gateway process: all its threads
        "wall_s_per_image": round(wall / n, 2),
        "decode_s_per_image": round(decode_s / n, 2),  # model time (GPU time on a GPU)
        "images_per_s": round(n / wall, 4) if wall > 0 else None,
    }


def _row(s3: Any, direct: Any, bucket: str, item: Any, state: str) -> dict[str, Any]:
    physical = (direct.head_object(Bucket=bucket, Key=item.png.name)["ContentLength"]
                + direct.head_object(Bucket=bucket, Key=item.png.name + SUFFIX)["ContentLength"])
    data = s3.get_object(Bucket=bucket, Key=item.png.name)["Body"].read()
    got, _ = decode_image_bytes(data)
    ref, _ = decode_image_bytes(item.png.read_bytes())
    return {"image": item.name, "size": item.size, "state": state, "physical_bytes": physical,
            "png_bytes": item.png_bytes, "jpeg_bytes": item.jpeg_bytes,
            "sidecar_bytes": item.latent_bytes, "psnr": psnr(got, ref), "ssim": ssim(got, ref),
            "same_length": len(data) == item.png_bytes}


def _metrics(endpoint: str) -> dict[str, float]:
    """The gateway's unlabelled Prometheus samples (GET /metrics needs no signature)."""
    with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(s3: Any, bucket: str, key: str, timeout: float = 900.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headers = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
        if headers.get("x-s3latent-representation") == "latent":
            return "latent"
        if "refused" in headers.get("x-s3latent-state", ""):
            return "refused: " + headers["x-s3latent-state"]
        time.sleep(0.5)
    return "timeout"


def _summary(latent_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not latent_rows:
        return {"converted": 0, "of": len(rows)}
    phys = sum(r["physical_bytes"] for r in latent_rows)
    png = sum(r["png_bytes"] for r in latent_rows)
    jpeg = sum(r["jpeg_bytes"] for r in latent_rows)
    return {
        "converted": len(latent_rows), "of": len(rows),
        "mean_physical_bytes": round(phys / len(latent_rows)),
        "reduction_vs_png_pct": round(100 * (1 - phys / png), 1),
        "ratio_vs_jpeg_q90": round(phys / jpeg, 3),
        "psnr_min": round(min(r["psnr"] for r in latent_rows), 2),
        "psnr_mean": round(statistics.fmean(r["psnr"] for r in latent_rows), 2),
        "ssim_mean": round(statistics.fmean(r["ssim"] for r in latent_rows), 4),
        "same_length_as_upload": all(r["same_length"] for r in latent_rows),
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| codec | converted | bytes/image | vs PNG | vs JPEG q90 | PSNR min / mean | "
             "SSIM mean | same length | time |", "|" + "---|" * 9]
    for codec, r in results["codecs"].items():
        s = r["summary"]
        if not s.get("converted"):
            lines.append(f"| {codec} | 0/{s['of']} | | | | | | | |")
            continue
        lines.append(f"| {codec} | {s['converted']}/{s['of']} | {s['mean_physical_bytes']:,} | "
                     f"-{s['reduction_vs_png_pct']}% | {s['ratio_vs_jpeg_q90']}x | "
                     f"{s['psnr_min']} / {s['psnr_mean']} dB | {s['ssim_mean']} | "
                     f"{s['same_length_as_upload']} | {s['seconds']} s |")
    return "\n".join(lines)


def cost_table(results: dict[str, Any]) -> str:
    """What converting cost, per codec and image size."""
    lines = [f"| codec | side | decodes / admission | CPU s / image | wall s / image | "
             f"decode s / image | images/s (jobs={results.get('jobs', 1)}) |", "|" + "---|" * 7]
    for codec, r in results["codecs"].items():
        for size, c in r.get("conversion", {}).items():
            lines.append(f"| {codec} | {size} | {c['decodes_per_admission']} | "
                         f"{c['cpu_s_per_image']} | {c['wall_s_per_image']} | "
                         f"{c['decode_s_per_image']} | {c['images_per_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3latent bench storage", description=__doc__)
    parser.add_argument("--codecs", default="auto,q4p,q8,lossless")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--count", type=int, default=4, help="images in the corpus")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=1,
                        help="conversions at once (the gateway's conversion_workers)")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--representations", action="store_true",
                        help="latent vs AVIF vs JPEG XL on the varied corpus (issue 15; "
                             "representation_bench.py); uses --counts")
    parser.add_argument("--counts", default="512=24,1024=24",
                        help="with --representations: images per side, e.g. 512=24,1024=8")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    if not (model_dir / "taef2_decoder.pth").is_file():
        print(f"TAEF2 weights not found in {model_dir}", file=sys.stderr)
        return 2
    if args.representations:
        from . import representation_bench

        counts = {int(k): int(v) for k, v in (p.split("=") for p in args.counts.split(","))}
        with tempfile.TemporaryDirectory(prefix="s3latent-repr-") as tmp:
            rep = representation_bench.run(counts, model_dir, args.workdir or Path(tmp))
        print(representation_bench.table(rep))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rep, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="s3latent-storage-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run(args.codecs.split(","), [int(s) for s in args.sizes.split(",")],
                      args.count, model_dir, workdir, jobs=args.jobs)
    print(table(results))
    print()
    print(cost_table(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
