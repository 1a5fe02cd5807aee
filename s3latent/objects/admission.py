"""Admission: decide whether a latent may replace its image, and build the container.

Separate from the conversion queue so that torch, the codecs and the image
encoders load only when a conversion actually runs.

The representation (docs/representations.md) is chosen one layer above the
latent search: `admit` finds the latent candidate exactly as before; `admit_pair`
then, where the bucket asks for it, builds the AVIF candidate (the upload at the
coarsest AVIF quality whose rendition meets the same policy and margin) and picks
one. `admit_plain` stores an image that came without a latent as AVIF.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..backends.base import ObjectInfo, ObjectMeta
from ..config import BucketSettings
from ..decode.renderer import AVIF_DECODER_KEY, settings_dict, tiling_extra
from ..latent import avif
from ..latent import codec as codecs
from ..latent.autostep import predict_psnr, search_from_prediction
from ..latent.container import (
    KIND_AVIF,
    LATENT_PART,
    ContainerHeader,
    SidecarInfo,
    pack,
    unpack,
)
from ..latent.fidelity import decode_image_bytes, psnr
from ..latent.rendition import (
    RenderSettings,
    avif_render_profile,
    encode_rendition_sized,
    render_profile,
    settings_for_format,
    settings_for_upload,
)
from ..latent.sidecar import Sidecar, SidecarError, check_channels, parse_sidecar
from ..models.registry import ModelUnavailable, UnknownModel
from ..models.tiling import Tiling
from .physical import MODEL_META
from .refusals import Refused

if TYPE_CHECKING:
    from ..decode.services import DecodeServices

# Lossy codecs fall back to these, in order, when their rendition fails the policy.
FALLBACK = {"q4": ("q6", "q8", "lossless"), "q6": ("q8", "lossless"), "q8": ("lossless",),
            "auto": ("q8p", "lossless"), "q3p": ("q4p", "q8p", "lossless"),
            "q4p": ("q8p", "lossless"), "q6p": ("q8p", "lossless"), "q8p": ("lossless",)}
# "auto": the predictive codec at the coarsest step whose rendition meets min_psnr + margin.
AUTO, AUTO_BASE, AUTO_MARGIN_DB = "auto", "q4p", 0.3


@dataclass
class Admission:
    container: bytes
    header: ContainerHeader
    rendition: bytes
    # Container bytes of each candidate judged for a consumed pair ("latent", "avif"), so
    # the backend object says what the choice was between (bench: both sizes, one search).
    candidates: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass
class AvifCandidate:
    """The upload as AVIF at the coarsest quality whose rendition meets the policy."""

    payload: bytes
    params: avif.AvifParams
    rendition: bytes
    render_settings: RenderSettings
    fidelity: float


class Admitter:
    """The admission policy and container building of one gateway."""

    def __init__(self, decoding: DecodeServices) -> None:
        self.decoding = decoding

    async def admit_pair(self, settings: BucketSettings, key: str, image: ObjectInfo,
                         image_bytes: bytes, side: ObjectInfo, side_bytes: bytes) -> Admission:
        """The latent candidate (`admit`), then the representation the bucket asks for.

        With `sidecar = "keep"`, "smallest" and "latent" store the latent: an AVIF container
        of a pair must still hold the latent its sidecar key is rebuilt from, so it is
        always the larger (no AVIF search is spent on it). "avif" stores the image as AVIF
        *plus* that latent, when an AVIF quality meets the policy: more bytes, reads without
        a VAE. With `sidecar = "consume"` the sidecar key goes once admitted, so neither
        container holds anything for it (`_admit_consumed`).
        """
        consume = settings.sidecar == "consume"
        latent = await self.admit(settings, key, image, image_bytes, side, side_bytes,
                                  keep_sidecar=not consume)
        if consume:
            return await self._admit_consumed(settings, image, image_bytes, latent)
        if settings.representation != "avif" or not avif.available():
            return latent
        upload, _ = await asyncio.to_thread(decode_image_bytes, image_bytes)
        found = await self.avif_candidate(settings, image_bytes, upload)
        if found is None:
            return latent  # no AVIF quality meets the policy: the latent serves
        return await asyncio.to_thread(self._avif_pair, latent, found)

    async def _admit_consumed(self, settings: BucketSettings, image: ObjectInfo,
                              image_bytes: bytes, latent: Admission) -> Admission:
        """A pair whose sidecar is consumed: the latent container (no sidecar record) or the
        AVIF-only container (no latent inside), each holding only what the image needs.

        "smallest" compares the two containers' real bytes and keeps the smaller (the
        latent on a tie); "avif" takes the AVIF whenever a quality meets the policy;
        "latent" never searches AVIF. The latent candidate must pass first: a pair whose
        latent is refused is refused (nothing is consumed), whatever AVIF could do.
        """
        candidates = {"latent": len(latent.container)}
        latent.candidates = candidates
        if settings.representation == "latent" or not avif.available():
            return latent
        upload, _ = await asyncio.to_thread(decode_image_bytes, image_bytes)
        found = await self.avif_candidate(settings, image_bytes, upload)
        if found is None:
            return latent  # no AVIF quality meets the policy: the latent serves
        only = await asyncio.to_thread(self._avif_only, image, upload, found)
        candidates["avif"] = len(only.container)
        only.candidates = candidates
        if settings.representation == "avif" or len(only.container) < len(latent.container):
            return only
        return latent

    def _avif_only(self, image: ObjectInfo, upload: np.ndarray,
                   found: AvifCandidate) -> Admission:
        """The container of an image stored as AVIF alone (no model, no latent, no sidecar
        record): a plain image's, and a consumed pair's."""
        header = ContainerHeader(
            model="", shape=[3, int(upload.shape[0]), int(upload.shape[1])], dtype="uint8",
            codec=KIND_AVIF, codec_params=found.params.as_dict(), size=len(found.rendition),
            etag=hashlib.md5(found.rendition).hexdigest(),
            content_type=image.meta.content_type,
            last_modified=image.last_modified.isoformat(),
            image_format=found.render_settings.format.lower(),
            encoder=settings_dict(found.render_settings),
            psnr=None if found.fidelity == float("inf") else found.fidelity,
            render_profile=avif_render_profile(found.render_settings, avif.decoder_version()),
            sidecar=None, user_metadata=dict(image.meta.metadata),
            extra={AVIF_DECODER_KEY: avif.decoder_version()}, kind=KIND_AVIF)
        return Admission(pack(header, found.payload), header, found.rendition)

    async def admit_plain(self, settings: BucketSettings, image: ObjectInfo,
                          image_bytes: bytes) -> Admission:
        """An image uploaded without a latent, stored as AVIF; raises Refused with the reason
        when no quality meets the policy or the AVIF would not be smaller than the upload."""
        if not avif.available():
            raise Refused("AVIF is not available in this gateway's Pillow", durable=False)
        try:
            upload, info = await asyncio.to_thread(decode_image_bytes, image_bytes)
        except Exception as exc:
            raise Refused(f"image cannot be read: {exc}") from exc
        if info.refusal:
            raise Refused(f"image not storable as AVIF: {info.refusal}")
        pixels = upload.shape[0] * upload.shape[1]
        if pixels > self.decoding.config.decode.max_image_pixels:
            raise Refused(f"image has {pixels} pixels, over [decode] max_image_pixels "
                          f"({self.decoding.config.decode.max_image_pixels})")
        found = await self.avif_candidate(settings, image_bytes, upload)
        if found is None:
            raise Refused("admission policy failed (avif: no quality meets "
                          + ("a byte-identical rendition" if settings.policy == "exact"
                             else f"PSNR {settings.min_psnr} dB") + ")")
        admission = await asyncio.to_thread(self._avif_only, image, upload, found)
        if len(admission.container) >= len(image_bytes):
            raise Refused(f"AVIF is not smaller than the upload ({len(admission.container)} "
                          f">= {len(image_bytes)} bytes at quality {found.params.quality})")
        return admission

    async def avif_candidate(self, settings: BucketSettings, image_bytes: bytes,
                             upload: np.ndarray) -> AvifCandidate | None:
        """The coarsest AVIF of `upload` whose rendition (the decoded AVIF encoded exactly as
        reads will, at the upload's length) meets the bucket's policy with the same margin
        as the latent search; None when no quality does."""
        render_settings = await asyncio.to_thread(settings_for_upload, image_bytes,
                                                  self.decoding.config.decode.png_encoder)
        judged: dict[bytes, AvifCandidate] = {}

        def meets(payload: bytes, decoded: np.ndarray) -> bool:
            data, used = encode_rendition_sized(decoded, render_settings, len(image_bytes))
            if len(data) != len(image_bytes):
                return False  # too noisy to keep the upload's length, as for latents
            if settings.policy == "exact":
                ok, value = data == image_bytes, float("inf")
            else:
                value = psnr(decode_image_bytes(data)[0], upload)
                ok = value >= settings.min_psnr + AUTO_MARGIN_DB
            if ok:
                judged[payload] = AvifCandidate(payload, avif.AvifParams(0), data, used, value)
            return ok

        found = await asyncio.to_thread(avif.coarsest, upload, meets)
        if found is None:
            return None
        payload, params = found
        return dataclasses.replace(judged[payload], params=params)

    def _avif_pair(self, latent: Admission, found: AvifCandidate) -> Admission:
        """The AVIF container of a pair: the image as AVIF, then the latent candidate's
        payload, from which the sidecar key is rebuilt exactly as from the latent container."""
        lheader, lpayload = unpack(latent.container)
        extra = {LATENT_PART: {"codec": lheader.codec, "codec_params": lheader.codec_params,
                               "size": len(lpayload)},
                 AVIF_DECODER_KEY: avif.decoder_version()}
        header = dataclasses.replace(
            lheader, kind=KIND_AVIF, codec=KIND_AVIF, codec_params=found.params.as_dict(),
            size=len(found.rendition), etag=hashlib.md5(found.rendition).hexdigest(),
            image_format=found.render_settings.format.lower(),
            encoder=settings_dict(found.render_settings),
            psnr=None if found.fidelity == float("inf") else found.fidelity,
            render_profile=avif_render_profile(found.render_settings, avif.decoder_version()),
            extra=extra, payload_size=0, payload_sha256="")
        return Admission(pack(header, found.payload + lpayload), header, found.rendition)

    async def admit(self, settings: BucketSettings, key: str, image: ObjectInfo,
                    image_bytes: bytes, side: ObjectInfo, side_bytes: bytes, *,
                    keep_sidecar: bool = True) -> Admission:
        """Decide and build the container; raises Refused with the reason.

        `keep_sidecar` False: the container records no sidecar (it is consumed), so it
        holds only what the image needs."""
        await self.decoding.ready()
        try:
            sidecar = await asyncio.to_thread(parse_sidecar, side_bytes)
        except SidecarError as exc:
            raise Refused(f"bad sidecar: {exc}") from exc
        model_id = (sidecar.model or image.meta.metadata.get(MODEL_META)
                    or side.meta.metadata.get(MODEL_META))
        if not model_id:
            raise Refused("the sidecar names no model (metadata 'model' or "
                          "x-amz-meta-s3latent-model)")
        try:
            spec = self.decoding.models.spec(model_id)
            check_channels(sidecar, spec.latent_channels)
        except UnknownModel as exc:
            raise Refused(f"unknown model: {exc}") from exc
        except SidecarError as exc:
            raise Refused(f"bad sidecar: {exc}") from exc
        too_large = self.decoding.over_pixel_ceiling(model_id, sidecar.latent.shape)
        if too_large:
            raise Refused(too_large)
        tiling = self.decoding.plan_tiling(model_id, sidecar.latent.shape)
        try:
            upload, info = await asyncio.to_thread(decode_image_bytes, image_bytes)
        except Exception as exc:
            raise Refused(f"image cannot be read: {exc}") from exc
        if info.refusal:
            raise Refused(f"image not representable by a VAE: {info.refusal}")
        _, h, w = sidecar.latent.shape
        if (h * spec.downscale, w * spec.downscale) != upload.shape[:2]:
            raise Refused(f"latent {h}x{w} decodes to {h * spec.downscale}x"
                          f"{w * spec.downscale}, image is {upload.shape[0]}x{upload.shape[1]}")
        render_settings = await asyncio.to_thread(settings_for_upload, image_bytes,
                                                  self.decoding.config.decode.png_encoder)
        reasons = []
        loop = asyncio.get_running_loop()

        def image_psnr(restored: torch.Tensor) -> tuple[float, Any]:
            """Admission fidelity of a candidate latent, rendered exactly as reads will.

            Also returns the rendition and its settings, which admission checks and stores
            if this candidate is chosen.
            """
            future = asyncio.run_coroutine_threadsafe(
                self.decoding.decode_pixels(model_id, restored.float(), tiling), loop)
            data, used = encode_rendition_sized(future.result(), render_settings,
                                                len(image_bytes))
            if len(data) != len(image_bytes):
                # Too noisy to fit the upload's length even re-encoded harder: a finer step
                # keeps it, so tools that compare sizes (aws s3 sync) see the object unchanged.
                return float("-inf"), None
            return psnr(decode_image_bytes(data)[0], upload), (data, used)

        for codec_name in (settings.codec, *FALLBACK.get(settings.codec, ())):
            searched = None
            if codec_name == AUTO:
                # The coarsest step of the predictive codec that still meets the policy.
                codec_name = AUTO_BASE
                try:
                    codec, payload, params, searched = await self._auto_candidate(
                        model_id, sidecar.latent, upload, settings.min_psnr + AUTO_MARGIN_DB,
                        image_psnr)
                except ModelUnavailable as exc:
                    raise Refused(f"model unavailable: {exc}", durable=False) from exc
            else:
                codec = codecs.get_codec(codec_name, model=model_id)
                payload, params = await asyncio.to_thread(codec.encode, sidecar.latent)
            if searched is not None:
                # The search decoded and rendered this very payload; the same decode, not a
                # second one, goes through the policy check below.
                rendition, used = searched
            else:
                restored = await asyncio.to_thread(codec.decode, payload, params,
                                                   tuple(sidecar.latent.shape),
                                                   sidecar.raw_dtype)
                try:
                    pixels = await self.decoding.decode_pixels(model_id, restored.float(),
                                                               tiling)
                except ModelUnavailable as exc:
                    raise Refused(f"model unavailable: {exc}", durable=False) from exc
                rendition, used = await asyncio.to_thread(
                    encode_rendition_sized, pixels, render_settings, len(image_bytes))
            ok, fidelity, why = await self._policy(settings, rendition, image_bytes, upload)
            if ok:
                header = self._header(model_id, sidecar, codec_name, params, payload, image,
                                      rendition, used, fidelity, side, side_bytes, settings,
                                      tiling)
                if not keep_sidecar:
                    header = dataclasses.replace(header, sidecar=None)
                return Admission(pack(header, payload), header, rendition)
            reasons.append(f"{codec_name}: {why}")
            if settings.policy == "exact" and codec.lossless:
                break
        raise Refused("admission policy failed (" + "; ".join(reasons) + ")")

    async def admit_latent_only(self, settings: BucketSettings, sidecar: Sidecar, model_id: str,
                                fmt: str, content_type: str, meta: ObjectMeta) -> Admission:
        """A latent with no upload to compare against: the reference is its own decode."""
        await self.decoding.ready()
        too_large = self.decoding.over_pixel_ceiling(model_id, sidecar.latent.shape)
        if too_large:  # the PUT handler answers 400 before this; never decode one
            raise ValueError(too_large)
        # Every decode of this admission, the reference included, uses the tiling recorded
        # in the container, so the fidelity judged is that of what reads will serve.
        tiling = self.decoding.plan_tiling(model_id, sidecar.latent.shape)
        reference = await self.decoding.decode_pixels(model_id, sidecar.latent.float(), tiling)
        render_settings = settings_for_format(
            fmt, self.decoding.config.decode.png_encoder)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()

        def pixel_psnr(restored: torch.Tensor) -> tuple[float, Any]:
            future = asyncio.run_coroutine_threadsafe(
                self.decoding.decode_pixels(model_id, restored.float(), tiling), loop)
            pixels = future.result()
            return psnr(pixels, reference), pixels

        for codec_name in (settings.codec, *FALLBACK.get(settings.codec, ())):
            searched = None
            if codec_name == AUTO:
                codec_name = AUTO_BASE
                codec, payload, params, searched = await self._auto_candidate(
                    model_id, sidecar.latent, reference, settings.min_psnr + AUTO_MARGIN_DB,
                    pixel_psnr)
            else:
                codec = codecs.get_codec(codec_name, model=model_id)
                payload, params = await asyncio.to_thread(codec.encode, sidecar.latent)
            if codec.lossless:
                pixels = reference
            elif searched is not None:
                pixels = searched  # the search's decode of this payload, checked below
            else:
                restored = await asyncio.to_thread(codec.decode, payload, params,
                                                   tuple(sidecar.latent.shape), sidecar.raw_dtype)
                pixels = await self.decoding.decode_pixels(model_id, restored.float(), tiling)
            value = await asyncio.to_thread(psnr, pixels, reference)
            if value == float("inf") or (settings.policy == "perceptual"
                                         and value >= settings.min_psnr):
                rendition, used = await asyncio.to_thread(encode_rendition_sized, pixels,
                                                          render_settings, None)
                header = ContainerHeader(
                    model=model_id, shape=list(sidecar.latent.shape), dtype=sidecar.raw_dtype,
                    codec=codec_name, codec_params=params, size=len(rendition),
                    etag=hashlib.md5(rendition).hexdigest(), content_type=content_type,
                    last_modified=datetime.now(UTC).isoformat(), image_format=fmt.lower(),
                    encoder=settings_dict(used),
                    psnr=None if value == float("inf") else value,
                    render_profile=render_profile(used, model_id, "float32",
                                                  self.decoding.device_kind,
                                                  tiling.describe() if tiling else None,
                                                  threads=self.decoding.cpu_threads),
                    sidecar=None, user_metadata=dict(meta.metadata),
                    extra=tiling_extra(tiling, self.decoding.cpu_threads))
                return Admission(pack(header, payload), header, rendition)
        raise AssertionError("the lossless fallback always reproduces the reference")

    async def _auto_candidate(
        self, model_id: str, latent: torch.Tensor, image: np.ndarray, target: float,
        score: Callable[[torch.Tensor], tuple[float, Any]],
    ) -> tuple[codecs.Codec, bytes, dict[str, Any], Any]:
        """The `auto` candidate: the predictive codec at the coarsest step meeting `target`.

        The search starts at the step predicted from the latent and the `image` it must match
        (latent/autostep.py) instead of bisecting the ladder, so most admissions decode once
        or twice. `score` decodes a
        candidate latent and returns (fidelity, what to keep of that decode). Returns codec,
        payload, params and what `score` kept for the chosen step, so the caller checks that
        decode instead of repeating it; when no step meets the target, the codec's own step
        with nothing kept (the caller decodes and checks it, then falls back, as before).
        """
        codec = codecs.get_codec(AUTO_BASE, model=model_id)
        assert isinstance(codec, codecs.PredictiveCodec)
        kept: list[Any] = []

        def fidelity(restored: torch.Tensor) -> float:
            value, keep = score(restored)
            kept.append(keep)
            return value

        def search() -> tuple[bytes, dict[str, Any], Any]:
            predicted, calibrated = predict_psnr(codec, latent, model_id, image)
            found = search_from_prediction(codec, latent, fidelity, target, predicted,
                                           calibrated=calibrated)
            if not found.passed:
                payload, params = codec.encode(latent)
                return payload, params, None
            return found.payload, found.params, kept[found.index]

        payload, params, keep = await asyncio.to_thread(search)
        return codec, payload, params, keep

    async def _policy(self, settings: BucketSettings, rendition: bytes, image_bytes: bytes,
                      upload: np.ndarray) -> tuple[bool, float, str]:
        rendered, _ = await asyncio.to_thread(decode_image_bytes, rendition)
        value = await asyncio.to_thread(psnr, rendered, upload)
        if settings.policy == "exact":
            same = rendition == image_bytes
            return same, value, "rendition is not byte-identical to the upload"
        ok = value >= settings.min_psnr
        return ok, value, f"PSNR {value:.2f} dB < {settings.min_psnr} dB"

    def _header(self, model_id: str, sidecar: Sidecar, codec_name: str, params: dict[str, Any],
                payload: bytes, image: ObjectInfo, rendition: bytes, render_settings: Any,
                fidelity: float, side: ObjectInfo, side_bytes: bytes,
                settings: BucketSettings, tiling: Tiling | None) -> ContainerHeader:
        return ContainerHeader(
            model=model_id,
            shape=list(sidecar.latent.shape),
            dtype=sidecar.raw_dtype,
            codec=codec_name,
            codec_params=params,
            size=len(rendition),
            etag=hashlib.md5(rendition).hexdigest(),
            content_type=image.meta.content_type,
            last_modified=image.last_modified.isoformat(),
            image_format=render_settings.format.lower(),
            encoder=settings_dict(render_settings),
            psnr=None if fidelity == float("inf") else fidelity,
            render_profile=render_profile(render_settings, model_id, "float32",
                                          self.decoding.device_kind,
                                          tiling.describe() if tiling else None,
                                          threads=self.decoding.cpu_threads),
            sidecar=SidecarInfo(
                suffix=settings.sidecar_suffix,
                size=len(side_bytes),
                etag=side.etag,
                content_type=side.meta.content_type,
                last_modified=side.last_modified.isoformat(),
                header_b64=base64.b64encode(sidecar.header_bytes).decode(),
                dtype=sidecar.raw_dtype,
                shape=list(sidecar.raw_shape),
            ),
            user_metadata=dict(image.meta.metadata),
            extra=tiling_extra(tiling, self.decoding.cpu_threads),
        )
