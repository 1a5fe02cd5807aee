"""The decode pipeline: latents in, uint8 pixels out, batched per device.

One `DevicePipeline` per device (each CUDA device, else the CPU). Requests wait
in a bounded queue; a batcher groups those with the same model, shape and
dtype (up to `max_batch`, waiting at most `max_wait_ms` for company) and runs
one forward pass on a dedicated thread, so torch never runs on the event loop.
A full queue answers SlowDown at once: clients back off instead of piling up.

Renditions must not depend on which requests a batch happened to group (their
ETags were fixed at conversion). Decoders that cannot promise it on their own
(`batch_invariant` false, e.g. on CUDA, where kernels are picked by batch size)
are probed: the first batch of each (model, shape, dtype, batch size) is also
decoded one latent at a time; if any byte differs, that batch size is decoded
one at a time from then on, and the one-at-a-time results are what callers get.

Memory: every batch is charged its estimated peak (activations and outputs,
`estimate_decode_bytes`) against one `MemoryBudget` shared by all devices. A
batch is cut short so its estimate fits the budget, and waits (asynchronously,
first come first served) until in-flight decodes leave room; one decode larger
than the whole budget runs alone. A job may carry a `Tiling` (recorded in its
container): it is then decoded tile by tile (`decode_tiled`), one latent at a
time, so its bytes never depend on batching.

Stage 1 (decompress, dequantise) and stage 3 (image encoding) run on the
caller's thread pool; only stage 2 lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import S3Error
from ..models.tiling import (
    OUTPUT_BYTES_PER_PX,
    Tiling,
    decoder_act_bytes_per_px,
    estimate_decode_bytes,
)

log = logging.getLogger(__name__)

DecoderLookup = Callable[[str, torch.device], Any]
DEFAULT_BUDGET = 4 * 1024**3  # bytes; DecodeSettings.memory_budget


@dataclass
class _Job:
    model_id: str
    latent: torch.Tensor  # [C, h, w]
    future: asyncio.Future[np.ndarray]
    tiling: Tiling | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    threads: int | None = None  # CPU intra-op threads this decode must run with


@dataclass
class PipelineStats:
    batches: int = 0
    decoded: int = 0
    rejected: int = 0
    decode_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    budget_waits: int = 0  # batches that waited for room in the memory budget
    # (model, shape, dtype, batch size) -> batched output equals one-at-a-time output
    batch_invariance: dict[tuple[Any, ...], bool] = field(default_factory=dict)


class MemoryBudget:
    """Bytes that decodes in flight may use together; acquirers wait in arrival order.

    A request larger than the whole budget is granted when nothing else holds any (it runs
    alone instead of never). Async only: waiting never blocks the event loop.
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.total

    def would_wait(self, n: int) -> bool:
        """Whether `acquire(n)` would wait now."""
        return bool(self._waiters) or not self._fits(n)

    async def acquire(self, n: int) -> None:
        """Take `n` bytes, waiting for room; pair with `release(n)`."""
        if not self._waiters and self._fits(n):
            self.used += n
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._grant()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, future = self._waiters.popleft()
            if future.cancelled():
                continue
            self.used += n
            future.set_result(None)


def pixels_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [0,1] -> uint8 [B,H,W,3] on the same device, deterministically."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def pick_devices(setting: str) -> list[torch.device]:
    """'auto' -> every CUDA device, else the CPU; or one named device."""
    if setting == "auto":
        if torch.cuda.is_available():
            devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
            deterministic_cuda()
            return devices
        return [torch.device("cpu")]
    if setting.startswith("cuda"):
        deterministic_cuda()
    return [torch.device(setting)]


def deterministic_cuda() -> None:
    """Same latent, same bytes: no autotuned or TF32 kernels whose choice varies run to run."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _batch_cost(cost: tuple[int, int, bool], size: int) -> int:
    """Estimated peak of a batch of `size` from (activations, output, sequential) of one job:
    decoders that run a batch one latent at a time hold every output but one latent's
    activations; others hold all of it at once."""
    act, out, sequential = cost
    return act * (1 if sequential else size) + out * size


class DevicePipeline:
    """Batches decodes for one device; see the module docstring."""

    def __init__(
        self,
        device: torch.device,
        decoders: DecoderLookup,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        queue_depth: int = 64,
        cpu_threads: int = 0,
        compile: bool = False,
        on_batch: Callable[[int, float], None] | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.device = device
        self.budget = budget if budget is not None else MemoryBudget(DEFAULT_BUDGET)
        self._compile = compile
        self._compiled: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._decoders = decoders
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.queue_depth = queue_depth
        # On the CPU, oneDNN's results depend on the intra-op thread count, so every decode
        # runs with a known one: the container's recorded count, else this default.
        self.cpu_threads = (cpu_threads or torch.get_num_threads()) if device.type == "cpu" \
            else None
        self._on_batch = on_batch
        # Pending jobs grouped by (model, shape, dtype), oldest group first.
        self._groups: OrderedDict[tuple[Any, ...], list[_Job]] = OrderedDict()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{device}")
        self._task: asyncio.Task[None] | None = None
        self.stats = PipelineStats()

    @property
    def depth(self) -> int:
        """Jobs waiting or in the batch being decoded."""
        return self._pending

    def start(self) -> None:
        if self._task is None:
            if self.cpu_threads is not None:
                self._executor.submit(torch.set_num_threads, self.cpu_threads).result()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for jobs in self._groups.values():
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(S3Error("ServiceUnavailable"))
        self._groups.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def decode(self, model_id: str, latent: torch.Tensor,
                     tiling: Tiling | None = None, threads: int | None = None) -> np.ndarray:
        """uint8 HxWx3 pixels for one latent [C,h,w], tiled as given (None: untiled), on the
        CPU with `threads` intra-op threads (None: this pipeline's count); SlowDown when the
        queue is full."""
        if self._pending >= self.queue_depth:
            self.stats.rejected += 1
            raise S3Error("SlowDown", "The decode queue is full; retry shortly.")
        self.start()
        if self.cpu_threads is None:
            threads = None
        elif threads is None or threads < 1:
            threads = self.cpu_threads
        job = _Job(model_id, latent, asyncio.get_running_loop().create_future(), tiling,
                   threads=threads)
        key = (model_id, tuple(latent.shape), latent.dtype, tiling, threads)
        self._groups.setdefault(key, []).append(job)
        self._pending += 1
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._groups:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, jobs = next(iter(self._groups.items()))
            # Wait for company, unless the batch is full or the oldest waited long enough.
            deadline = jobs[0].enqueued + self.max_wait
            while len(jobs) < self.max_batch and time.perf_counter() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(),
                                           max(0.0, deadline - time.perf_counter()))
                except TimeoutError:
                    break
            try:
                per_job = await self._costs(key)
            except Exception as exc:  # the model cannot load: every waiter learns why
                del self._groups[key]
                self._pending -= len(jobs)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            jobs = self._groups.get(key, [])  # more may have joined while the model loaded
            size = min(self.max_batch, len(jobs))
            while size > 1 and _batch_cost(per_job, size) > self.budget.total:
                size -= 1  # never a batch the budget cannot hold at once
            batch, rest = jobs[:size], jobs[size:]
            if rest:
                self._groups[key] = rest
                self._groups.move_to_end(key)
            else:
                del self._groups[key]
            taken = len(batch)
            batch = [j for j in batch if not j.future.cancelled()]
            if not batch:
                self._pending -= taken
                continue
            cost = _batch_cost(per_job, len(batch))
            if self.budget.would_wait(cost):
                self.stats.budget_waits += 1
            try:
                await self.budget.acquire(cost)
            except BaseException:
                self._pending -= taken
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(S3Error("ServiceUnavailable"))
                raise
            try:
                started = time.perf_counter()
                pixels = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._decode_batch, key[0], [j.latent for j in batch],
                    key[3], key[4])
                elapsed = time.perf_counter() - started
                self.stats.batches += 1
                self.stats.decoded += len(batch)
                self.stats.decode_seconds += elapsed
                if self._on_batch is not None:
                    self._on_batch(len(batch), elapsed)
                for job, image in zip(batch, pixels, strict=True):
                    if not job.future.done():
                        job.future.set_result(image)
            except Exception as exc:  # the model failed: every waiter learns why
                log.exception("decode of a batch of %d failed on %s", len(batch), self.device)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self.budget.release(cost)
                self._pending -= taken

    async def _costs(self, key: tuple[Any, ...]) -> tuple[int, int, bool]:
        """(activation bytes, output bytes) of one job of this group, and whether a batch of
        them runs one latent at a time."""
        model_id, shape, _dtype, tiling, _threads = key
        decoder = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._decoders, model_id, self.device)
        _, h, w = shape
        down = int(getattr(decoder, "downscale", 8))
        total = estimate_decode_bytes(h, w, down, decoder_act_bytes_per_px(decoder), tiling)
        out = OUTPUT_BYTES_PER_PX * h * w * down * down
        sequential = tiling is not None or bool(getattr(decoder, "batch_invariant", False))
        return total - out, out, sequential

    def _decode_batch(self, model_id: str, latents: list[torch.Tensor],
                      tiling: Tiling | None = None,
                      threads: int | None = None) -> list[np.ndarray]:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # this thread is the device's only decoder
        decoder = self._decoders(model_id, self.device)
        if tiling is not None:
            # tiles are decoded one latent at a time: batch-independent by construction
            def tiled(batch: torch.Tensor) -> torch.Tensor:
                return decoder.decode_tiled(batch, tiling)

            return [self._run_decode(tiled, decoder.dtype, [x])[0] for x in latents]
        decode = decoder.decode
        if self._compile:
            # torch.compile behind a setting: first batches of each shape pay the compile.
            decode = self._compiled.setdefault(model_id, torch.compile(decoder.decode))
        if len(latents) == 1 or getattr(decoder, "batch_invariant", False):
            return self._run_decode(decode, decoder.dtype, latents)
        probe = (model_id, tuple(latents[0].shape), str(latents[0].dtype), len(latents))
        verdict = self.stats.batch_invariance.get(probe)
        if verdict is True:
            return self._run_decode(decode, decoder.dtype, latents)
        alone = [self._run_decode(decode, decoder.dtype, [x])[0] for x in latents]
        if verdict is None:
            batched = self._run_decode(decode, decoder.dtype, latents)
            same = all(a.tobytes() == b.tobytes() for a, b in zip(alone, batched, strict=True))
            self.stats.batch_invariance[probe] = same
            log.log(logging.INFO if same else logging.WARNING,
                    "decode batches of %d x %s for %s on %s are %s", len(latents), probe[1],
                    model_id, self.device,
                    "byte-identical to single decodes" if same
                    else "NOT byte-identical to single decodes: decoding them one at a time")
        return alone

    def _run_decode(self, decode: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype,
                    latents: list[torch.Tensor]) -> list[np.ndarray]:
        with torch.inference_mode():
            batch = torch.stack(latents).to(self.device, dtype, non_blocking=True)
            if self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            images = pixels_to_uint8(decode(batch)).cpu().numpy()
        return [images[i] for i in range(images.shape[0])]


class DecodePipeline:
    """All devices; a job goes to the device with the shortest queue."""

    def __init__(self, decoders: DecoderLookup, *, device: str = "auto", max_batch: int = 8,
                 max_wait_ms: float = 5.0, queue_depth: int = 64, cpu_threads: int = 0,
                 compile: bool = False,
                 on_batch: Callable[[int, float], None] | None = None,
                 memory_budget: int = DEFAULT_BUDGET) -> None:
        self.budget = MemoryBudget(memory_budget)  # one for all devices: they share the host
        self.devices = [
            DevicePipeline(d, decoders, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           queue_depth=queue_depth, cpu_threads=cpu_threads, compile=compile,
                           on_batch=on_batch, budget=self.budget)
            for d in pick_devices(device)
        ]

    @property
    def depth(self) -> int:
        return sum(d.depth for d in self.devices)

    @property
    def cpu_threads(self) -> int | None:
        """The thread count new CPU renditions are made with (None: not on the CPU)."""
        return self.devices[0].cpu_threads

    async def decode(self, model_id: str, latent: torch.Tensor,
                     tiling: Tiling | None = None, threads: int | None = None) -> np.ndarray:
        target = min(self.devices, key=lambda d: d.depth)
        return await target.decode(model_id, latent, tiling, threads)

    async def close(self) -> None:
        for d in self.devices:
            await d.close()
