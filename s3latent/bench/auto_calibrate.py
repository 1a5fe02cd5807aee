"""Calibrate where `auto` starts its step search (s3latent/latent/autostep.json).

Three sub-commands:

- ``collect``: for every image of the bench corpus (`s3latent.bench.corpus`), every step of the
  `auto` ladder is scored exactly as admission scores it (encode, decode the payload, model
  decode, rendition at the upload's length, PSNR against the upload; -inf when the length
  cannot be kept), next to the codec's own quantisation error at that step and the latent's
  statistics. Slow (one model decode per image and step); writes a JSON of records.
- ``fit``: least squares of the PSNR on those inputs, per model; writes the coefficients.
- ``simulate``: replays today's bisection and the predicted search on the records (no decode),
  in-sample and leave-one-out: decodes per admission and payload bytes.

    python -m s3latent.bench.auto_calibrate collect --sizes 256,512 --out cal.json
    python -m s3latent.bench.auto_calibrate fit cal.json --write s3latent/latent/autostep.json
    python -m s3latent.bench.auto_calibrate simulate cal.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..latent import autostep
from ..latent import codec as codecs

TARGET = 40.3  # the default policy: min_psnr 40 + AUTO_MARGIN_DB 0.3


async def _collect(dirs: list[tuple[Path, tuple[int, ...], int | None]], model_dir: Path,
                   out: Path, earlier: list[dict[str, Any]], log: Any = print
                   ) -> list[dict[str, Any]]:
    from ..config import Config
    from ..decode.services import DecodeServices
    from ..latent.fidelity import decode_image_bytes, psnr
    from ..latent.rendition import encode_rendition_sized, settings_for_upload
    from ..latent.sidecar import parse_sidecar
    from .corpus import make_corpus

    cfg = Config(models={"taef2": {"kind": "tae",
                                   "decoder": str(model_dir / "taef2_decoder.pth")}})
    decoding = DecodeServices(cfg)
    records = list(earlier)  # kept: a run can be stopped and resumed, or extended
    done = {r["image"] for r in records}
    try:
        await decoding.ready()
        for corpus_dir, sizes, count in dirs:
            items = make_corpus(corpus_dir, sizes=sizes, count=count, model_dir=model_dir)
            for item in items:
                png = item.png.read_bytes()
                upload, _ = decode_image_bytes(png)
                if item.name in done:  # measured before: its features brought up to date
                    old = next(r for r in records if r["image"] == item.name)
                    old["features"].update(autostep.image_features(upload))
                    continue
                started = time.monotonic()
                sidecar = parse_sidecar(item.latent.read_bytes())
                latent = sidecar.latent
                shape = tuple(latent.shape)
                tiling = decoding.plan_tiling("taef2", shape)
                render = settings_for_upload(png, cfg.decode.png_encoder)
                codec = codecs.get_codec(autostep_base(), model="taef2")
                assert isinstance(codec, codecs.PredictiveCodec)
                dist = autostep.step_distortion(codec, latent)
                rows = []
                for step, d in zip(autostep.LADDER, dist, strict=True):
                    c = codec.with_step(step)
                    payload, params = c.encode(latent)
                    restored = c.decode(payload, params, shape, sidecar.raw_dtype)
                    pixels = await decoding.decode_pixels("taef2", restored.float(), tiling)
                    data, _ = encode_rendition_sized(pixels, render, len(png))
                    score = (psnr(decode_image_bytes(data)[0], upload) if len(data) == len(png)
                             else None)  # None: the length cannot be kept (-inf at admission)
                    rows.append({"step": step, "distortion": d, "payload_bytes": len(payload),
                                 "psnr": score})
                records.append({"image": item.name, "size": item.size, "model": "taef2",
                                "features": {**autostep.latent_features(codec, latent),
                                             **autostep.image_features(upload)},
                                "steps": rows,
                                "seconds": round(time.monotonic() - started, 1)})
                text = json.dumps({"target": TARGET, "records": records}, indent=1)
                await asyncio.to_thread(out.write_text, text)
                log(f"{item.name}: {[r['psnr'] and round(r['psnr'], 2) for r in rows]} "
                    f"({records[-1]['seconds']} s)")
    finally:
        await decoding.close()
    return records


def autostep_base() -> str:
    """The predictive preset `auto` searches (admission's AUTO_BASE, without importing it)."""
    return "q4p"


def _points(records: list[dict[str, Any]], lo: float = 30.0, hi: float = 56.0
            ) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        for s in r["steps"]:
            if s["psnr"] is not None and lo <= s["psnr"] <= hi:
                xs.append(autostep.design_row(-10 * math.log10(s["distortion"]), r["features"]))
                ys.append(s["psnr"])
    return np.asarray(xs), np.asarray(ys)


def fit(records: list[dict[str, Any]]) -> list[float]:
    """Least-squares coefficients of PSNR on `autostep.design_row` over the records' steps."""
    x, y = _points(records)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [round(float(c), 6) for c in coef]


def _predicted(record: dict[str, Any], coef: list[float] | None) -> list[float]:
    neg = [-10 * math.log10(s["distortion"]) for s in record["steps"]]
    if coef is None:
        return neg
    return [float(np.dot(coef, autostep.design_row(d, record["features"]))) for d in neg]


def _table_search(record: dict[str, Any], pred: list[float] | None, target: float,
                  calibrated: bool) -> tuple[int, int]:
    """(decodes, chosen payload bytes) of the predicted search replayed on a record."""
    import torch

    steps = record["steps"]
    scores = {s["step"]: (-math.inf if s["psnr"] is None else s["psnr"]) for s in steps}
    sizes = {s["step"]: s["payload_bytes"] for s in steps}

    class _Replay(codecs.PredictiveCodec):
        def with_step(self, step: float) -> codecs.PredictiveCodec:
            return _Replay(self.name, step)

        def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
            return b"", {"step": self.step}

        def decode(self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...],
                   dtype: str) -> torch.Tensor:
            return torch.tensor([params["step"]])

    def score(t: torch.Tensor) -> float:
        return scores[min(scores, key=lambda k: abs(k - float(t[0])))]

    result = autostep.search_from_prediction(_Replay("r", 1.0), torch.zeros(1, 1, 1), score,
                                             target, pred, calibrated=calibrated)
    step = min(sizes, key=lambda k: abs(k - result.step))
    return len(result.tried), sizes[step]


def _bisection(record: dict[str, Any], target: float) -> tuple[int, int | None]:
    """(decodes, payload bytes) of today's `encode_to_target` replayed on a record.

    Decodes include admission's re-decode of the chosen payload (the one the new search
    reuses), so the two columns compare what an admission costs.
    """
    steps = record["steps"]
    ladder = [s["step"] for s in steps]
    score = [(-math.inf if s["psnr"] is None else s["psnr"]) for s in steps]
    seen: set[int] = set()

    def trial(i: int) -> float:
        seen.add(i)
        return score[i]

    lo, hi = 0, len(ladder) - 1
    if trial(hi) < target:
        return len(seen) + 2, None  # + its own step and the re-decode; not compared
    while lo < hi:
        mid = (lo + hi) // 2
        if trial(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    trial(lo)
    return len(seen) + 1, steps[lo]["payload_bytes"]


def simulate(records: list[dict[str, Any]], target: float = TARGET,
             coef: list[float] | None = None, loo: bool = False) -> dict[str, Any]:
    """Today's bisection vs the predicted search on the records, per image and in total."""
    rows = []
    for k, r in enumerate(records):
        c = coef
        if loo:
            c = fit(records[:k] + records[k + 1:])
        old_d, old_b = _bisection(r, target)
        new_d, new_b = _table_search(r, _predicted(r, c), target, calibrated=c is not None)
        rows.append({"image": r["image"], "size": r["size"], "decodes_before": old_d,
                     "decodes_after": new_d, "bytes_before": old_b, "bytes_after": new_b})
    compared = [r for r in rows if r["bytes_before"] is not None]
    total_old = sum(r["bytes_before"] for r in compared)
    total_new = sum(r["bytes_after"] for r in compared)
    return {
        "target": target, "leave_one_out": loo, "calibrated": coef is not None or loo,
        "images": len(rows),
        "decodes_before": round(statistics.fmean(r["decodes_before"] for r in rows), 3),
        "decodes_after": round(statistics.fmean(r["decodes_after"] for r in rows), 3),
        "payload_bytes_change_pct": round(100 * (total_new / total_old - 1), 2),
        "images_with_more_bytes": sum(r["bytes_after"] > r["bytes_before"] for r in compared),
        "images_with_fewer_bytes": sum(r["bytes_after"] < r["bytes_before"] for r in compared),
        # the finest step fails: the bisection fell back to the codec's own step, off the table
        "bisection_fell_back": len(rows) - len(compared),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3latent.bench.auto_calibrate",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--sizes", default="256,512", help="every corpus source at these sizes")
    c.add_argument("--large", default="1024", help="these sizes too, for --large-count sources")
    c.add_argument("--large-count", type=int, default=4)
    c.add_argument("--model-dir", type=Path, default=None)
    c.add_argument("--workdir", type=Path, default=Path("/tmp/s3latent-autostep"))
    c.add_argument("--out", type=Path, required=True,
                   help="records; images already in it are not measured again")
    f = sub.add_parser("fit")
    f.add_argument("data", type=Path)
    f.add_argument("--write", type=Path, default=None)
    s = sub.add_parser("simulate")
    s.add_argument("data", type=Path)
    s.add_argument("--target", type=float, default=TARGET)
    s.add_argument("--rows", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "collect":
        from .corpus import default_model_dir

        model_dir = args.model_dir or default_model_dir()
        dirs: list[tuple[Path, tuple[int, ...], int | None]] = []
        if args.sizes:
            dirs.append((args.workdir / "small", tuple(int(v) for v in args.sizes.split(",")),
                         None))
        if args.large and args.large_count:
            dirs.append((args.workdir / "large", tuple(int(v) for v in args.large.split(",")),
                         args.large_count))
        earlier = json.loads(args.out.read_text())["records"] if args.out.is_file() else []
        asyncio.run(_collect(dirs, model_dir, args.out, earlier))
        return 0
    records = json.loads(args.data.read_text())["records"]
    if args.cmd == "fit":
        coef = fit(records)
        doc = {"what": "auto step search: PSNR per step = coef . [1, -10 log10 D(step), "
                       + ", ".join(autostep.FEATURES) + "] (s3latent/latent/autostep.py)",
               "fitted_by": "python -m s3latent.bench.auto_calibrate fit",
               "models": {"taef2": {"coef": coef, "images": len(records)}}}
        x, y = _points(records)
        resid = y - x @ np.asarray(coef)
        print(json.dumps({"coef": coef, "points": len(y),
                          "residual_std_db": round(float(resid.std()), 3),
                          "residual_max_db": round(float(np.abs(resid).max()), 3)}))
        if args.write:
            args.write.write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    coef = fit(records)
    for label, result in (("uncalibrated", simulate(records, args.target)),
                          ("in-sample", simulate(records, args.target, coef)),
                          ("leave-one-out", simulate(records, args.target, loo=True))):
        rows = result.pop("rows")
        print(label, json.dumps(result))
        if args.rows:
            for r in rows:
                print("   ", json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
