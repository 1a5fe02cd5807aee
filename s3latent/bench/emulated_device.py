"""Run `s3latent serve` with each decode holding an emulated decode device.

The cluster bench asks what spillover does for a fleet whose nodes each have their
own decode device (a GPU per node). On a CPU-only machine the gateway processes
share the same cores, so a decode moved to a peer competes with the one it left
and no node has capacity of its own. This wrapper gives every process a device of
its own that is busy for a fixed time per decoded latent: the real decode still
runs (its pixels are the ones served, so renditions stay byte-exact), and then the
decode thread sleeps until the latent's service time has passed. Sleeping holds
the node's single decode thread, as a GPU would, without using a core, so three
emulated nodes really do have three times the decode capacity of one.

Used as the interpreter command of a gateway process:
    python -m s3latent.bench.emulated_device --service-ms=80 -m s3latent serve ...
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from ..decode import pipeline


def install(service_ms: float) -> None:
    """Make every decode of this process take at least `service_ms` per latent."""
    real = pipeline.DevicePipeline._run_decode

    def held(self: pipeline.DevicePipeline, decode: Callable[..., Any], dtype: Any,
             latents: list[Any]) -> Any:
        start = time.perf_counter()
        out = real(self, decode, dtype, latents)
        remaining = service_ms / 1000.0 * len(latents) - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        return out

    pipeline.DevicePipeline._run_decode = held  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m s3latent.bench.emulated_device")
    ap.add_argument("--service-ms", type=float, required=True,
                    help="device time per decoded latent")
    args, rest = ap.parse_known_args(argv)
    if rest[:2] != ["-m", "s3latent"]:
        ap.error("expected '-m s3latent ...' after the options")
    if args.service_ms < 0:
        ap.error("--service-ms must be >= 0")
    install(args.service_ms)
    from ..cli import main as cli_main

    return cli_main(rest[2:])


if __name__ == "__main__":
    raise SystemExit(main())
