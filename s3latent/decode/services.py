"""Models, decode pipeline and renderer, built the first time a latent object needs them.

torch and the model code take about 220 MB of memory once imported; a gateway
that only ever serves plain objects never pays for them, and importing them
happens on a worker thread, not the event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram

from ..config import Config

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..models.registry import ModelRegistry
    from ..models.tiling import Tiling
    from .renderer import Renderer


class DecodeServices:
    """See the module docstring."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self._config = config
        self._models: ModelRegistry | None = None
        self._renderer: Renderer | None = None
        self._lock = asyncio.Lock()
        self._batches: Histogram | None = None
        if registry is not None:
            self._register(registry)


    @property
    def config(self) -> Config:
        """The gateway's configuration (decode settings, models)."""
        return self._config
    def _register(self, registry: CollectorRegistry) -> None:
        self._batches = Histogram("s3latent_decode_batch_size", "Latents per decode batch",
                                  registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self._decode_seconds = Histogram(
            "s3latent_decode_batch_seconds", "Time of one batched decode", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        depth = Gauge("s3latent_decode_queue_depth", "Decodes waiting or running",
                      registry=registry)
        depth.set_function(lambda: self._renderer.pipeline.depth if self._renderer else 0)
        stages = Gauge("s3latent_render_stage_seconds", "Total time per render stage",
                       ["stage"], registry=registry)
        for stage in ("decompress", "decode", "encode"):
            stages.labels(stage).set_function(
                lambda stage=stage: self._renderer.stage_seconds[stage] if self._renderer
                else 0.0)
        waits = Gauge("s3latent_decode_budget_waits",
                      "Decode batches that waited for room in decode.memory_budget",
                      registry=registry)
        waits.set_function(lambda: sum(d.stats.budget_waits for d in
                                       self._renderer.pipeline.devices)
                           if self._renderer else 0)
        in_use = Gauge("s3latent_decode_memory_bytes",
                       "Estimated bytes held by decodes in flight (decode.memory_budget)",
                       registry=registry)
        in_use.set_function(lambda: self._renderer.pipeline.budget.used
                            if self._renderer else 0)
        rejected = Gauge("s3latent_decode_rejected", "Decodes refused with SlowDown (queue full)",
                         registry=registry)
        rejected.set_function(lambda: sum(d.stats.rejected for d in
                                          self._renderer.pipeline.devices)
                              if self._renderer else 0)

        invariance = Gauge("s3latent_decode_batch_invariance",
                           "Batch shapes probed: batched decodes byte-identical to single ones "
                           "(result=invariant) or not, hence decoded one at a time (varies)",
                           ["result"], registry=registry)
        for result, value in (("invariant", True), ("varies", False)):
            invariance.labels(result).set_function(
                lambda value=value: sum(v is value for d in self._renderer.pipeline.devices
                                        for v in d.stats.batch_invariance.values())
                if self._renderer else 0)

    def _on_batch(self, size: int, seconds: float) -> None:
        if self._batches is not None:
            self._batches.observe(size)
            self._decode_seconds.observe(seconds)

    @property
    def built(self) -> bool:
        return self._renderer is not None

    async def ready(self) -> DecodeServices:
        if self._renderer is None:
            async with self._lock:
                if self._renderer is None:
                    await asyncio.to_thread(self._build)
        return self

    def _build(self) -> None:
        from ..models.registry import ModelRegistry
        from .pipeline import DecodePipeline
        from .renderer import Renderer

        cfg = self._config
        models = ModelRegistry.from_config(cfg.models)
        pipeline = DecodePipeline(models.get, device=cfg.decode.device,
                                  max_batch=cfg.decode.max_batch,
                                  max_wait_ms=cfg.decode.max_wait_ms,
                                  queue_depth=cfg.decode.queue_depth,
                                  cpu_threads=cfg.decode.cpu_threads,
                                  compile=cfg.decode.compile, on_batch=self._on_batch,
                                  memory_budget=cfg.decode.memory_budget)
        self._models = models
        self._renderer = Renderer(models, pipeline)

    @property
    def models(self) -> ModelRegistry:
        assert self._models is not None, "await DecodeServices.ready() first"
        return self._models

    @property
    def renderer(self) -> Renderer:
        assert self._renderer is not None, "await DecodeServices.ready() first"
        return self._renderer

    @property
    def device_kind(self) -> str:
        return self.renderer.device_kind

    @property
    def cpu_threads(self) -> int | None:
        """The CPU thread count new renditions are made with, recorded in their containers."""
        return self.renderer.pipeline.cpu_threads

    async def decode_pixels(self, model_id: str, latent: torch.Tensor,
                            tiling: Tiling | None = None) -> np.ndarray:
        await self.ready()
        return await self.renderer.decode_pixels(model_id, latent, tiling)

    def image_pixels(self, model_id: str, shape: tuple[int, ...] | list[int]) -> int:
        """Pixels of the image a latent [C, h, w] of this model decodes to."""
        down = self.models.spec(model_id).downscale
        return int(shape[-2]) * int(shape[-1]) * down * down

    def over_pixel_ceiling(self, model_id: str, shape: tuple[int, ...] | list[int]) -> str | None:
        """Why a latent is refused up front for its size (decode.max_image_pixels), or None."""
        pixels, ceiling = self.image_pixels(model_id, shape), self._config.decode.max_image_pixels
        if pixels <= ceiling:
            return None
        down = self.models.spec(model_id).downscale
        return (f"the decoded image would be {int(shape[-1]) * down}x{int(shape[-2]) * down} "
                f"({pixels} pixels), over the {ceiling}-pixel conversion limit "
                f"(decode.max_image_pixels)")

    def plan_tiling(self, model_id: str, shape: tuple[int, ...] | list[int]) -> Tiling | None:
        """The tiling a new conversion of this latent records (None: untiled).

        From the shape, the model kind and the [decode] settings only, so every decode of one
        conversion (admission's and every later read) uses the same one.
        """
        from ..models.tiling import default_overlap, plan_tiling, planning_act_bytes_per_px

        spec = self.models.spec(model_id)
        cfg = self._config.decode
        overlap = cfg.tile_overlap if cfg.tile_overlap >= 0 else default_overlap(spec.kind)
        return plan_tiling(int(shape[-2]), int(shape[-1]), spec.downscale,
                           planning_act_bytes_per_px(spec.kind), tile=cfg.tile_size,
                           overlap=overlap, budget=cfg.memory_budget)

    async def close(self) -> None:
        if self._renderer is not None:
            await self._renderer.close()
