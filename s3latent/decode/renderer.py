"""Containers in, canonical renditions out: stage 1 and 3 around the decode pipeline.

Stage 1 (unpack, decompress, dequantise) and stage 3 (image encoding) run on
a thread pool; stage 2 is the batched pipeline. Concurrent reads of one object
share one decode. Caching is the caller's (s3latent.cache.readpath).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..latent import codec as codecs
from ..latent.container import KIND_AVIF, ContainerHeader, image_part, unpack
from ..latent.rendition import PILLOW, RenderSettings, encode_rendition_sized
from ..models.registry import ModelRegistry
from ..models.tiling import Tiling
from ..singleflight import SingleFlight
from .pipeline import DecodePipeline

log = logging.getLogger(__name__)


class Renderer:
    """See the module docstring."""

    def __init__(self, models: ModelRegistry, pipeline: DecodePipeline, *,
                 workers: int = 2) -> None:
        self.models = models
        self.pipeline = pipeline
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="render")
        self._inflight: SingleFlight[tuple[str, str, str], bytes] = SingleFlight()
        self.device_kind = pipeline.devices[0].device.type
        self.stage_seconds: dict[str, float] = {"decompress": 0.0, "decode": 0.0, "encode": 0.0}

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def decode_pixels(self, model_id: str, latent: torch.Tensor,
                            tiling: Tiling | None = None) -> np.ndarray:
        """uint8 HxWx3 for a latent [C,h,w] (stage 2 only), tiled as given."""
        return await self.pipeline.decode(model_id, latent, tiling)

    async def rendition(self, bucket: str, key: str, etag: str, raw: bytes
                        ) -> tuple[bytes, str]:
        """(rendition bytes, path) for the container `raw` stored at (bucket, key, etag).

        Concurrent renditions of one stored object share one decode ("shared"). A container
        that cannot be read raises ContainerError; what that means for a client (a corrupt
        object, counted and logged with its key) is the caller's to say.
        """
        data, shared = await self._inflight.run((bucket, key, etag), lambda: self._render(raw))
        return data, "shared" if shared else "decode"

    async def _render(self, raw: bytes) -> bytes:
        started = time.perf_counter()
        header, payload = await self._run(unpack, raw)
        if header.kind == KIND_AVIF:
            # The image itself, stored as AVIF: decoded on the CPU by the pinned AV1 decoder
            # (bit-exact, latent/avif.py); no VAE, no batching.
            decoded = time.perf_counter()
            self.stage_seconds["decompress"] += decoded - started
            pixels = await self._run(_decode_avif, header, payload)
        else:
            latent = await self._run(_dequantise, header, payload)
            decoded = time.perf_counter()
            self.stage_seconds["decompress"] += decoded - started
            # the tiling recorded at conversion; none recorded (older containers): untiled
            pixels = await self.pipeline.decode(header.model, latent, header_tiling(header),
                                                header_threads(header))
        encoded = time.perf_counter()
        self.stage_seconds["decode"] += encoded - decoded
        settings = RenderSettings(**header.encoder)
        data, _ = await self._run(encode_rendition_sized, pixels, settings, header.size)
        self.stage_seconds["encode"] += time.perf_counter() - encoded
        return data

    async def close(self) -> None:
        await self.pipeline.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _decode_avif(header: ContainerHeader, payload: bytes) -> np.ndarray:
    """Pixels of an AVIF container, checked against the decoder its profile names."""
    from ..latent import avif

    expected = header.extra.get(AVIF_DECODER_KEY)
    if expected is not None and expected != avif.decoder_version():
        # Another decoder build could (in principle) round YUV->RGB differently; the read
        # goes on, and `_checked` in the read path still refuses to send a wrong ETag.
        log.warning("AVIF container decoded by %s, converted with %s",
                    avif.decoder_version(), expected)
    return avif.decode(image_part(header, payload))


def _dequantise(header: ContainerHeader, payload: bytes) -> torch.Tensor:
    codec = codecs.get_codec(header.codec, model=header.model)
    latent = codec.decode(payload, header.codec_params, tuple(header.shape), header.dtype)
    return latent.float()


TILING_KEY = "tiling"  # in ContainerHeader.extra; absent: the object decodes untiled
# In ContainerHeader.extra: the CPU intra-op thread count the rendition was made with (CPU
# bytes depend on it); absent (older containers, GPU conversions): the decoder's own setting.
THREADS_KEY = "cpu_threads"


def header_threads(header: ContainerHeader) -> int | None:
    value = header.extra.get(THREADS_KEY)
    return value if isinstance(value, int) and 1 <= value <= 1024 else None
AVIF_DECODER_KEY = "avif_decoder"  # in an AVIF container's extra: the decoder it was judged by


def header_tiling(header: ContainerHeader) -> Tiling | None:
    """How this container's latent is decoded: the tiling recorded at conversion, or None."""
    return Tiling.from_json(header.extra.get(TILING_KEY))


def tiling_extra(tiling: Tiling | None, threads: int | None = None) -> dict[str, Any]:
    """ContainerHeader.extra for a conversion with this tiling and CPU thread count: nothing
    when untiled and not on the CPU, so such headers stay what they were before."""
    extra: dict[str, Any] = {} if tiling is None else {TILING_KEY: tiling.to_json()}
    if threads is not None:
        extra[THREADS_KEY] = threads
    return extra


def settings_dict(settings: RenderSettings) -> dict[str, Any]:
    """RenderSettings as the JSON object a container header stores.

    A Pillow encoder is left out, so such headers stay exactly what they were
    before the field existed (and gateways that predate it can still read them);
    RenderSettings(**stored) restores it as the default.
    """
    stored = dataclasses.asdict(settings)
    if stored.get("encoder") == PILLOW:
        del stored["encoder"]
    return stored


Renderable = Callable[[str, torch.Tensor], Awaitable[np.ndarray]]
