"""How latent objects look in the backend, and how to recognise them cheaply.

A converted pair K / K+suffix is held as:
- K: the container (latent payload + header). Its backend metadata mirrors the
  logical image (size, ETag, Last-Modified, Content-Type, user metadata), so
  HEAD never reads the body.
- K+suffix: a small *stub* whose metadata mirrors the logical sidecar. Keeping a
  stub (instead of deleting the sidecar, as DESIGN.md first said) keeps the
  sidecar key in the backend listing, in order, so listings need no merging of
  synthetic keys, and "the sidecar key exists" stays a fact the backend holds.

Both are written as single-part multipart uploads, whose ETag ends in "-1".
A PutObject ETag never does, so only "-1" entries of a listing can differ from
what the backend lists.

The gateway's own records live in the same bucket under HIDDEN_PREFIX, a key
range clients never see (listings skip it, reads answer NoSuchKey, writes are
refused), so they stay with the bucket's data and are browsable beside it:
- `.s3latent/v/<key> <physical etag>.<size>.<etag>.<mtime>`: empty objects whose
  *key* carries the logical view of a container or stub. One listing of this
  range resolves a whole page of "-1" entries (see `view_index_key`).
- `.s3latent/refused/<image key>`: why a pair was not converted (refusals.py).
- `.s3latent/e/<key> <physical etag>.<size>.<etag>`: empty objects whose key carries an
  encrypted object's plaintext size and ETag, for listings (objects/encryption.py).
- `.s3latent/upload/<sha256 of an upload id>`: an encrypted upload's key record, for its
  parts (objects/encryption.py); dropped when the upload completes or is aborted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..backends.base import Backend, ObjectInfo, ObjectMeta, read_body
from ..errors import S3Error
from ..latent.container import (
    MAX_HEADER,
    PREFIX_SIZE,
    ContainerError,
    ContainerHeader,
    IncompleteHeader,
    latent_part,
    peek_header,
)

log = logging.getLogger(__name__)

REP = "rep"
REP_LATENT = "latent"
REP_STUB = "stub"
# Mirror of the logical object in the backend's metadata (values are ASCII).
L_SIZE, L_ETAG, L_MODIFIED, L_IMAGE = "lsize", "letag", "lmod", "image"
# On a stub: the ETag of the sidecar upload its container was made from (the container
# header's sidecar.etag). The stub's L_ETAG is that of the bytes served, which differ
# after a lossy conversion. Stubs written before this field compare L_ETAG instead.
S_SOURCE = "setag"
# On a stub in a versioned bucket: the version of the image key whose container it reads.
L_IVID = "ivid"
# On a stand-in (objects/standins.py): the client version it stands in for (a claim, believed
# only when the gateway's records say so); on a stub stand-in also the backend version of
# the container it reads (`ivid` is the image's client version).
L_LVID, L_IBVID = "lvid", "ibvid"
# First read of a claimed container: nearly always holds the whole header.
CLAIM_READ = 4096
# On a container, for people browsing the backend bucket: how it was stored.
M_CODEC, M_MODEL, M_PSNR = "codec", "model", "psnr"

# Client user metadata (x-amz-meta-s3latent-model) naming the decoder of a pair or latent
# upload, where the sidecar itself does not.
MODEL_META = "s3latent-model"
HIDDEN_PREFIX = ".s3latent/"
VIEWS_PREFIX = HIDDEN_PREFIX + "v/"
REFUSALS_PREFIX = HIDDEN_PREFIX + "refused/"
ACLS_PREFIX = HIDDEN_PREFIX + "acl/"
UPLOADS_PREFIX = HIDDEN_PREFIX + "upload/"
SSE_INDEX_PREFIX = HIDDEN_PREFIX + "e/"
# Access fields of an object (docs/access-control.md): its owner's canonical ID, the ACL
# given when it was written, and a token naming that write (an ACL set later by
# PutObjectAcl is a record under ACLS_PREFIX tied to the token, so it dies with the write).
# Every rewrite of the same logical object (conversion, stub, sidecar) carries them over.
A_OWNER, A_ACL, A_TOKEN = "own", "acl", "wtok"
ACCESS_FIELDS = (A_OWNER, A_ACL, A_TOKEN)
# Sorts after every key the gateway writes under HIDDEN_PREFIX: a listing that
# starts after it has skipped the whole hidden range in one step.
HIDDEN_END = HIDDEN_PREFIX + "\U0010ffff"
MAX_KEY_BYTES = 1024
_VIEW_SEP = " "
_VIEW_FIELD = "."
# Characters that can follow the logical key in a view index key; a listing
# delimiter made of none of them rolls index keys up exactly as logical keys.
VIEW_KEY_CHARS = frozenset("0123456789abcdefp-" + _VIEW_SEP + _VIEW_FIELD)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


KEEP_PREFIX = HIDDEN_PREFIX + "keep/"
# Keep copies of containers converted in a versioned bucket: `keepv/<version>/<image key>`
# (a version ID holds no "/", so the name is never ambiguous).
KEEPV_PREFIX = HIDDEN_PREFIX + "keepv/"


# The `null` version's keep copies: `keepv/null-<sidecar etag>/<image key>`. The `null`
# version can hold several containers in turn (Suspended and Enabled in turn), each read by
# its own stub versions: named by the sidecar a container holds, one never replaces
# another that a stub still reads. (`keep/<image key>`, the older single name, is still
# read.) Version IDs of the local backend are hex: never "null-...".
NULL_KEEP = "null-"


def keep_key(image_key: str, version_id: str | None = None,
             sidecar_etag: str | None = None) -> str:
    """Where the container of `image_key`'s version is kept for stubs that outlive it
    (docs/versioning.md): the `null` version's by the sidecar it holds (at the old name
    without `sidecar_etag`), others under keepv/<version>/."""
    if version_id is None or version_id == "null":
        if sidecar_etag is not None:
            return KEEPV_PREFIX + NULL_KEEP + sidecar_etag + "/" + image_key
        return KEEP_PREFIX + image_key
    return KEEPV_PREFIX + version_id + "/" + image_key


def null_keep_keys(stub: ObjectInfo, image_key: str) -> list[str]:
    """The keep copies a stub naming the `null` version (or no version) may read: the
    one named by its sidecar, then the older single name."""
    view = logical_view(stub)
    names = [keep_key(image_key)]
    if view is not None:
        names.insert(0, keep_key(image_key, "null", stub.meta.internal.get(S_SOURCE,
                                                                          view.etag)))
    return names


def is_hidden(key: str) -> bool:
    """Keys of the gateway's own records, never shown to clients."""
    return key.startswith(HIDDEN_PREFIX)


def may_be_latent(physical_etag: str) -> bool:
    """Only single-part multipart uploads can be containers or stubs."""
    return physical_etag.endswith("-1")


def representation(info: ObjectInfo) -> str:
    """What the backend metadata *claims* the object is ("plain", "latent" or "stub").

    Only single-part multipart objects can be containers or stubs; anything else
    claiming to be one is plain. A claim is still only a claim: `verified` checks it
    against the bytes before the object layer relies on it.
    """
    rep = info.meta.internal.get(REP, "plain")
    if rep not in (REP_LATENT, REP_STUB) or not may_be_latent(info.etag):
        return "plain"
    return rep


def as_plain(info: ObjectInfo) -> ObjectInfo:
    """`info` with the gateway's internal claims dropped: the plain object it really is.

    Its stored checksums go too: metadata with a false claim was not written by the
    gateway, so nothing in its namespace is vouched for.
    """
    meta = dataclasses.replace(info.meta, internal={}, checksums={})
    return dataclasses.replace(info, meta=meta)


def container_holds(info: ObjectInfo, header: ContainerHeader) -> bool:
    """Whether a verified container header is the one `info`'s mirror describes."""
    view = logical_view(info)
    return (representation(info) == REP_LATENT and view is not None
            and header.size == view.size and header.etag == view.etag)


def stub_holds(stub: ObjectInfo, image_key: str, header: ContainerHeader) -> bool:
    """Whether `stub` is the sidecar key of the verified container `header` of image_key."""
    view = logical_view(stub)
    side = header.sidecar
    if representation(stub) != REP_STUB or view is None or side is None:
        return False
    source = stub.meta.internal.get(S_SOURCE, view.etag)
    return stub.key == image_key + side.suffix and side.size == view.size and \
        side.etag == source


async def read_header(backend: Backend, bucket: str, info: ObjectInfo
                      ) -> ContainerHeader | None:
    """The container header at the start of `info`'s object (magic and CRC checked), or
    None when those bytes are no container (or the object changed since `info`)."""
    want = min(CLAIM_READ, info.size)
    for _ in range(2):
        if want < PREFIX_SIZE:
            return None
        try:
            got, body = await backend.get_object(bucket, info.key, (0, want - 1))
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        data = await read_body(body)
        if got.etag != info.etag:
            return None
        try:
            return peek_header(data)
        except IncompleteHeader as exc:
            if exc.needed > min(info.size, PREFIX_SIZE + MAX_HEADER):
                return None
            want = exc.needed
        except ContainerError:
            return None
    return None


async def verified(backend: Backend, bucket: str, info: ObjectInfo) -> ObjectInfo:
    """`info` if its latent claim is backed by the bytes, else `as_plain(info)`.

    Backend metadata can be written around the gateway (another tool, a copy of a
    gateway's bucket), so a claimed container must start with a container header
    (magic, CRC) matching its mirror, and a claimed stub must belong to a verified
    container of its image. Costs one ranged read (two for a stub, plus a HEAD).
    """
    rep = representation(info)
    if rep == "plain":
        return info if REP not in info.meta.internal else as_plain(info)
    if rep == REP_LATENT:
        header = await read_header(backend, bucket, info)
        if header is not None and container_holds(info, header):
            return info
    else:
        image_key = info.meta.internal.get(L_IMAGE, "")
        ivid = info.meta.internal.get(L_IVID)  # versioned: the container's version
        # Where its container may be: the image's current version (unversioned), or the
        # version it names and that version's keep copy (versioned).
        places: list[tuple[str, str | None]] = [(image_key, ivid)]
        ibvid = info.meta.internal.get(L_IBVID)
        if ibvid is not None and ivid is not None:
            places.insert(0, (image_key, ibvid))
        if ivid == "null":
            places += [(name, None) for name in null_keep_keys(info, image_key)]
        elif ivid is not None:
            places.append((keep_key(image_key, ivid), None))
        for place, vid in places if image_key and not is_hidden(image_key) else []:
            try:
                if vid is None:
                    image = await backend.head_object(bucket, place)
                else:
                    image = await backend.head_object(bucket, place, version_id=vid)
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "NoSuchVersion", "MethodNotAllowed"):
                    raise
                continue
            if representation(image) != REP_LATENT:
                continue
            header = await read_header(backend, bucket, image)
            if header is not None and container_holds(image, header) and \
                    stub_holds(info, image_key, header):
                return info
    log.warning("%s/%s claims to be a %s but its bytes do not back it: served as a plain "
                "object", bucket, info.key, "container" if rep == REP_LATENT else "stub")
    return as_plain(info)


@dataclass
class LogicalView:
    """The logical size/ETag/Last-Modified a container or stub mirrors."""

    size: int
    etag: str
    last_modified: datetime


def logical_view(info: ObjectInfo) -> LogicalView | None:
    internal = info.meta.internal
    if representation(info) == "plain":
        return None
    try:
        return LogicalView(
            int(internal[L_SIZE]),
            internal[L_ETAG],
            datetime.fromisoformat(internal[L_MODIFIED]).astimezone(UTC),
        )
    except (KeyError, ValueError):
        return None


def logical_info(info: ObjectInfo) -> ObjectInfo:
    """The client's view of a backend object (plain ones are unchanged)."""
    view = logical_view(info)
    if view is None:
        return info
    return ObjectInfo(info.key, view.size, view.etag, view.last_modified, info.meta,
                      parts_count=None, tag_count=info.tag_count)


def mirror(rep: str, size: int, etag: str, modified: datetime, **extra: str) -> dict[str, str]:
    """Backend metadata of a container or stub: the logical view HEAD answers with."""
    return {REP: rep, L_SIZE: str(size), L_ETAG: etag,
            L_MODIFIED: modified.astimezone(UTC).isoformat(), **extra}


def storage_mirror(codec: str, model: str, psnr: float | None) -> dict[str, str]:
    """Codec, model and admission PSNR for a container's backend metadata.

    Nothing reads these back; they make the backend bucket self-explaining
    (`aws s3api head-object` on the backend shows how each image is stored).
    PSNR "exact" means the rendition reproduced the reference bit for bit.
    """
    return {M_CODEC: _ascii(codec), M_MODEL: _ascii(model),
            M_PSNR: "exact" if psnr is None else f"{psnr:.2f}"}


def access_of(internal: dict[str, str]) -> dict[str, str]:
    """The access fields of existing metadata, for a rewrite of the same logical object."""
    return {k: internal[k] for k in ACCESS_FIELDS if k in internal}


def acl_record_key(key: str) -> str:
    """The hidden key of `key`'s PutObjectAcl record (hashed: any key length fits)."""
    return ACLS_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def upload_record_key(upload_id: str) -> str:
    """The hidden key of a multipart upload's record (hashed: any upload id fits)."""
    return UPLOADS_PREFIX + hashlib.sha256(upload_id.encode()).hexdigest()


def storage_of(internal: dict[str, str]) -> dict[str, str]:
    """The storage_mirror fields of existing metadata (a copy keeps them)."""
    return {k: internal[k] for k in (M_CODEC, M_MODEL, M_PSNR) if k in internal}


def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode()[:200]


def view_index_key(key: str, physical_etag: str, view: LogicalView | None) -> str | None:
    """The hidden key recording `key`'s logical view (None: plain) at this physical ETag.

    The view rides in the key itself, so a listing of the index range returns a
    page's worth of views without reading any object. Index keys sort like the
    logical keys they describe (the separator is a space, below every printable
    character), so the index range of a page is one listing. None when the key
    is too long for the index or an ETag could not be parsed back.
    """
    if any(c in physical_etag for c in (_VIEW_SEP, _VIEW_FIELD)):
        return None
    if view is None:
        fields = f"{physical_etag}{_VIEW_FIELD}p"
    else:
        if any(c in view.etag for c in (_VIEW_SEP, _VIEW_FIELD)) or not view.etag:
            return None
        micros = (view.last_modified - _EPOCH) // timedelta(microseconds=1)
        fields = _VIEW_FIELD.join((physical_etag, f"{view.size:x}", view.etag, f"{micros:x}"))
    out = f"{VIEWS_PREFIX}{key}{_VIEW_SEP}{fields}"
    return out if len(out.encode()) <= MAX_KEY_BYTES else None


def parse_view_index_key(index_key: str) -> tuple[str, str, LogicalView | None] | None:
    """(logical key, physical ETag, view or None for plain) of an index key."""
    if not index_key.startswith(VIEWS_PREFIX):
        return None
    key, sep, fields = index_key[len(VIEWS_PREFIX):].rpartition(_VIEW_SEP)
    if not sep:
        return None
    parts = fields.split(_VIEW_FIELD)
    try:
        if len(parts) == 2 and parts[1] == "p":
            return key, parts[0], None
        if len(parts) == 4:
            modified = _EPOCH + timedelta(microseconds=int(parts[3], 16))
            return key, parts[0], LogicalView(int(parts[1], 16), parts[2], modified)
    except (ValueError, OverflowError):
        return None
    return None


def view_index_prefix(key: str) -> str:
    """Where every index key of `key` starts (to find stale ones)."""
    return f"{VIEWS_PREFIX}{key}{_VIEW_SEP}"


def sse_index_key(key: str, physical_etag: str, size: int, etag: str) -> str | None:
    """The hidden key recording an encrypted object's plaintext size and ETag (listings
    show them), laid out like view_index_key; None when it would be too long."""
    if any(c in e for e in (physical_etag, etag) for c in (_VIEW_SEP, _VIEW_FIELD)):
        return None
    out = _VIEW_FIELD.join((f"{SSE_INDEX_PREFIX}{key}{_VIEW_SEP}{physical_etag}",
                            f"{size:x}", etag))
    return out if len(out.encode()) <= MAX_KEY_BYTES else None


def parse_sse_index_key(index_key: str) -> tuple[str, str, int, str] | None:
    """(key, physical ETag, plaintext size, ETag) of an sse_index_key."""
    if not index_key.startswith(SSE_INDEX_PREFIX):
        return None
    key, sep, fields = index_key[len(SSE_INDEX_PREFIX):].rpartition(_VIEW_SEP)
    parts = fields.split(_VIEW_FIELD)
    if not sep or len(parts) != 3:
        return None
    try:
        return key, parts[0], int(parts[1], 16), parts[2]
    except ValueError:
        return None


async def drop_sse_index(backend: Backend, bucket: str, key: str, physical_etag: str) -> None:
    """Forget the plaintext size recorded for `key` at `physical_etag` (it was replaced)."""
    prefix = f"{SSE_INDEX_PREFIX}{key}{_VIEW_SEP}"
    page = await backend.list_objects(bucket, prefix=prefix, max_keys=100)
    for entry in page.entries:
        parsed = parse_sse_index_key(entry.key)
        if parsed is not None and parsed[0] == key and parsed[1] == physical_etag:
            await backend.delete_object(bucket, entry.key)


def stub_body(image_key: str, container_etag: str) -> bytes:
    """A stub's bytes: unique per stub written (the container it points at and a nonce).

    Verdicts about stubs and their logical views are remembered per physical ETag; two stubs
    of one key with the same bytes would share one ETag, and a verdict reached about the
    first (say, during an overwrite, when its container was going) would stick to the next.
    """
    return json.dumps({"s3latent": "sidecar-stub", "image": image_key,
                       "container": container_etag,
                       "nonce": secrets.token_hex(8)}).encode() + b"\n"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_small(backend: Backend, bucket: str, key: str, data: bytes,
                    meta: ObjectMeta) -> ObjectInfo:
    """A small PutObject (index entries, refusal markers)."""
    return await backend.put_object(bucket, key, _once(data), meta, size=len(data))


async def write_view_index(backend: Backend, bucket: str, key: str, physical_etag: str,
                           view: LogicalView | None) -> str | None:
    """Record `key`'s logical view in the index; returns the index key (None: not indexable)."""
    index_key = view_index_key(key, physical_etag, view)
    if index_key is not None:
        await put_small(backend, bucket, index_key, b"",
                        ObjectMeta(content_type="application/x-empty"))
    return index_key


async def drop_view_index(backend: Backend, bucket: str, info: ObjectInfo) -> None:
    """Forget the index entry of the object `info` describes (it is being replaced)."""
    if not may_be_latent(info.etag):
        return
    index_key = view_index_key(info.key, info.etag, logical_view(info))
    if index_key is not None:
        await backend.delete_object(bucket, index_key)


class TagsChanged(Exception):
    """The key's tags are no longer those the caller read (a client's PutObjectTagging
    landed meanwhile); `tags` are the ones there now."""

    def __init__(self, tags: dict[str, str]) -> None:
        super().__init__("the object's tags changed")
        self.tags = tags


async def write_single_part(
    backend: Backend,
    bucket: str,
    key: str,
    data: bytes,
    meta: ObjectMeta,
    *,
    if_match: str | None = None,
    keep_tags: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    replace_version: str | None = None,
) -> ObjectInfo:
    """Write `data` as a one-part multipart upload (ETag "...-1"), optionally guarded.

    `replace_version` (backends with REPLACES_VERSIONS, versioned buckets): the write takes
    the place of that version, which must be current with ETag `if_match`, keeping its ID.

    The guard is checked just before completing; completing is the commit point,
    so a concurrent newer PUT either lands first (we abort) or after (it wins).

    A rewrite of an existing key carries its tags in `meta` (read before); a tagging of
    the key landing after that read would be undone by the commit. With `keep_tags`
    (the key's tag lock, which PutObjectTagging holds too) the tags are checked again
    under that lock just before completing: TagsChanged if they differ.
    """
    upload_id = await backend.create_multipart_upload(bucket, key, meta)
    try:
        etag = await backend.upload_part(bucket, key, upload_id, 1, _once(data), size=len(data))
        async with keep_tags() if keep_tags is not None else nullcontext():
            if if_match is not None:
                current = await backend.head_object(bucket, key)
                if current.etag != if_match:
                    raise S3Error("PreconditionFailed", Condition="If-Match")
            if keep_tags is not None:
                tags = await backend.get_tags(bucket, key)
                if tags != meta.tags:
                    raise TagsChanged(tags)
            if replace_version is not None:
                return await backend.complete_multipart_upload(  # type: ignore[call-arg]
                    bucket, key, upload_id, [(1, etag)], if_match=if_match,
                    replace_version=replace_version)
            return await backend.complete_multipart_upload(
                bucket, key, upload_id, [(1, etag)], if_match=if_match
            )
    except BaseException:
        try:
            await backend.abort_multipart_upload(bucket, key, upload_id)
        except Exception:  # the original failure matters more
            pass
        raise


class NoLatent(ValueError):
    """A container that holds an image only (a plain image stored as AVIF) has no latent."""


def sidecar_file(header: ContainerHeader, payload: bytes) -> bytes:
    """The latent as a safetensors file: the sidecar as uploaded (same length, dequantised
    values with a lossy codec), or a plain file for a latent-only upload. Deterministic:
    the stub's ETag is the MD5 of these bytes, computed once at conversion."""
    from safetensors.torch import save

    from ..latent import codec as codecs
    from ..latent.sidecar import build_sidecar_bytes

    part = latent_part(header, payload)
    if part is None:
        raise NoLatent("this object is stored as an image only; it holds no latent")
    codec_name, params, data = part
    codec = codecs.get_codec(codec_name, model=header.model)
    latent = codec.decode(data, params, tuple(header.shape), header.dtype)
    if header.sidecar is not None:
        return build_sidecar_bytes(header.sidecar.header_bytes, latent)
    return save({"latent": latent.contiguous()}, metadata={"model": header.model})


def served_etag(upload_etag: str, upload: bytes, served: bytes) -> str:
    """The ETag of a sidecar key after conversion: the upload's while the bytes served are
    the upload's (a multipart-style upload ETag included), else the MD5 of what is served."""
    return upload_etag if served == upload else hashlib.md5(served).hexdigest()
