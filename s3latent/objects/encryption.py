"""Server-side encryption of stored objects: the stored format, keys, and streaming.

The gateway encrypts (docs/encryption.md), the same way over every backend; the backend only
ever holds ciphertext. An object is stored as one *chunk* per upload body: a single PUT is one
chunk, a multipart object one chunk per part (each part is encrypted as it arrives, with the
upload's data key). A chunk is

    salt (12 random bytes + the part number) | segment 0 | segment 1 | ... | segment n-1

where each segment is AES-256-GCM over up to SEGMENT plaintext bytes (ciphertext + 16-byte
tag). The chunk key is HKDF(data key, salt); a segment's nonce is its index and whether it
is the chunk's last; the additional data names the part number (0 for a single PUT), which
must also be the chunk's place in the object's part table when there is one. So:

- a range read decrypts only the segments it overlaps (random access);
- any change to stored bytes (a flipped bit, a truncation, segments or parts swapped) fails
  a tag check: the read answers 500 and logs; it never serves wrong bytes;
- a re-uploaded part gets a fresh salt, so no (key, nonce) pair is ever used twice.

The plaintext length follows from the ciphertext length (`plaintext_size`), so nothing but
the data key's record is needed in the metadata, which lives in the gateway's reserved
namespace (`s3lx-`): clients cannot write it.

Data keys: SSE-S3 draws a random 32-byte key per object (or upload) and stores it wrapped
(AES-GCM) under a master key named by its id, so master keys can be rotated (old ones stay
readable). SSE-C derives the data key from the customer's key and a per-object salt; the
customer key is never stored, only a salted HMAC that recognises it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..backends.base import HashedBody, ObjectBody, ObjectInfo

log = logging.getLogger(__name__)

SEGMENT = 64 * 1024
TAG = 16
SALT = 16
KEY_BYTES = 32
# Batches of segments at least this large are sealed or opened on a worker thread.
_THREAD_BATCH = 256 * 1024

# Internal metadata (stored as s3lx-<name>).
F_MODE = "sse"  # MODE_S3 or MODE_C
F_FORMAT = "ssef"  # the stored format: FORMAT
F_KEY = "ssek"  # SSE-S3: "<master key id>:<b64 nonce+wrapped data key>"; SSE-C: b64 salt
F_CHECK = "ssech"  # SSE-C: b64 HMAC of the customer key (recognises it, reveals nothing)
# SSE-S3 single-chunk objects: the plaintext's MD5, their ETag as S3 gives it (recorded when
# the body ends: backends store the metadata after the body, as they do checksums).
F_ETAG = "sseetag"
MODE_S3 = "AES256"
MODE_C = "C"
FORMAT = f"gcm-{SEGMENT}"
FIELDS = (F_MODE, F_FORMAT, F_KEY, F_CHECK, F_ETAG)

_AAD = b"s3lx-sse-1"
_WRAP_AAD = b"s3lx-sse-s3-data-key"
_CHECK_INFO = b"s3lx-sse-c-check"
_DK_INFO = b"s3lx-sse-c-data-key"
_CHUNK_INFO = b"s3lx-sse-chunk"


class EncryptionError(Exception):
    """Stored ciphertext or its key record is damaged or unreadable: never serve it."""


class WrongKey(Exception):
    """The customer key given is not the one the object was written with."""


class KeyUnavailable(Exception):
    """No master key is configured (or the object's key id is not known here)."""


# -- sizes -------------------------------------------------------------------------------

def _segments(n: int) -> int:
    return max(1, -(-n // SEGMENT))


def ciphertext_size(n: int) -> int:
    """Stored bytes of a chunk of `n` plaintext bytes (an empty one still has a tag)."""
    return SALT + n + TAG * _segments(n)


def plaintext_size(stored: int) -> int:
    """Plaintext bytes of a stored chunk; EncryptionError if no plaintext has that size."""
    body = stored - SALT
    k = -(-body // (SEGMENT + TAG)) if body > 0 else 0
    n = body - TAG * k
    if k < 1 or n < 0 or ciphertext_size(n) != stored:
        raise EncryptionError(f"{stored} bytes is no encrypted chunk's size")
    return n


# -- keys --------------------------------------------------------------------------------

def _kid(key: bytes) -> str:
    return hashlib.sha256(b"s3lx-master-key-id" + key).hexdigest()[:16]


def read_key_file(path: str | Path) -> bytes:
    """A master key file: 32 random bytes, base64 (what `openssl rand -base64 32` writes)."""
    text = Path(path).read_text().strip()
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError(f"{path}: not base64") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: the key must be {KEY_BYTES} bytes (base64 of them), "
                         f"found {len(key)}")
    return key


class Keyring:
    """The gateway's SSE-S3 master keys: the current one wraps, any known one unwraps.

    `auto_path`: where a key is created (0600) on first use when none is configured (the
    local backend's state directory); None: SSE-S3 needs a configured key.
    """

    def __init__(self, keys: list[bytes] | None = None, *, auto_path: Path | None = None,
                 why_not: str = "", old: list[bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._current: str | None = None
        for key in keys or []:
            self._add(key)
        for key in old or []:  # unwrap only: never the current key
            self._keys.setdefault(_kid(key), key)
        self.auto_path = auto_path
        self.why_not = why_not or "no SSE-S3 master key is configured ([encryption] key_file)"

    @classmethod
    def from_files(cls, current: str | None, old: list[str], *,
                   auto_path: Path | None = None, why_not: str = "") -> Keyring:
        return cls([read_key_file(current)] if current else [],
                   old=[read_key_file(p) for p in old],
                   auto_path=auto_path if current is None else None, why_not=why_not)

    def _add(self, key: bytes) -> None:
        kid = _kid(key)
        self._keys.setdefault(kid, key)
        if self._current is None:
            self._current = kid

    @property
    def available(self) -> bool:
        """Whether SSE-S3 writes can be served (a key, or one can be made)."""
        return self._current is not None or self.auto_path is not None

    def _current_key(self) -> tuple[str, bytes]:
        if self._current is None and self.auto_path is not None:
            self._load_or_create(self.auto_path)
        if self._current is None:
            raise KeyUnavailable(self.why_not)
        return self._current, self._keys[self._current]

    def _load_or_create(self, path: Path) -> None:
        """The local gateway's own key: made once, 0600, never replaced."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
            try:
                os.link(tmp, path)  # never overwrites a key another process made
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            log.info("created the SSE-S3 master key %s", path)
        self._add(read_key_file(path))

    def wrap(self, data_key: bytes) -> str:
        kid, master = self._current_key()
        nonce = os.urandom(12)
        wrapped = AESGCM(master).encrypt(nonce, data_key, _WRAP_AAD)
        return f"{kid}:{base64.b64encode(nonce + wrapped).decode()}"

    def unwrap(self, record: str) -> bytes:
        kid, sep, blob = record.partition(":")
        if not sep:
            raise EncryptionError("malformed SSE-S3 key record")
        if kid not in self._keys and self._current is None and self.auto_path is not None \
                and self.auto_path.exists():
            self._load_or_create(self.auto_path)
        master = self._keys.get(kid)
        if master is None:
            raise KeyUnavailable(f"the master key {kid} that wrapped this object's key is "
                                 "not configured")
        try:
            raw = base64.b64decode(blob, validate=True)
            data_key = AESGCM(master).decrypt(raw[:12], raw[12:], _WRAP_AAD)
        except (ValueError, InvalidTag) as exc:
            raise EncryptionError("the SSE-S3 key record does not open") from exc
        if len(data_key) != KEY_BYTES:
            raise EncryptionError("the SSE-S3 data key has the wrong length")
        return data_key


@dataclass
class Sealing:
    """What a new encrypted object (or upload) needs: its metadata fields and data key."""

    fields: dict[str, str]
    data_key: bytes


def new_sse_s3(keyring: Keyring) -> Sealing:
    data_key = os.urandom(KEY_BYTES)
    return Sealing({F_MODE: MODE_S3, F_FORMAT: FORMAT, F_KEY: keyring.wrap(data_key)},
                   data_key)


def _ssec_check(customer_key: bytes, salt: bytes) -> str:
    return base64.b64encode(hmac.new(customer_key, _CHECK_INFO + salt,
                                     hashlib.sha256).digest()).decode()


def _ssec_data_key(customer_key: bytes, salt: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_BYTES, salt, _DK_INFO).derive(customer_key)


def new_sse_c(customer_key: bytes) -> Sealing:
    salt = os.urandom(16)
    return Sealing({F_MODE: MODE_C, F_FORMAT: FORMAT, F_KEY: base64.b64encode(salt).decode(),
                    F_CHECK: _ssec_check(customer_key, salt)},
                   _ssec_data_key(customer_key, salt))


def mode_of(internal: dict[str, str]) -> str | None:
    """MODE_S3, MODE_C, or None (not encrypted)."""
    return internal.get(F_MODE)


def data_key(internal: dict[str, str], keyring: Keyring,
             customer_key: bytes | None) -> bytes:
    """The data key of an encrypted object; WrongKey, KeyUnavailable or EncryptionError."""
    mode = internal.get(F_MODE)
    if internal.get(F_FORMAT) != FORMAT:
        raise EncryptionError(f"unknown stored format {internal.get(F_FORMAT)!r}")
    if mode == MODE_S3:
        return keyring.unwrap(internal.get(F_KEY, ""))
    if mode == MODE_C:
        if customer_key is None:
            raise WrongKey("no customer key")
        try:
            salt = base64.b64decode(internal.get(F_KEY, ""), validate=True)
        except ValueError as exc:
            raise EncryptionError("malformed SSE-C salt") from exc
        if not hmac.compare_digest(_ssec_check(customer_key, salt), internal.get(F_CHECK, "")):
            raise WrongKey("not the object's key")
        return _ssec_data_key(customer_key, salt)
    raise EncryptionError(f"unknown encryption mode {mode!r}")


def client_views(info: ObjectInfo) -> tuple[set[str], set[int]]:
    """The ETags and sizes that name this stored object as clients see it, for conditional
    deletes (DeleteObjects entries, lifecycle expiry), which are judged on what listings and
    HEAD show: a single-chunk encrypted object's plaintext size and, for SSE-S3, its
    plaintext MD5 (F_ETAG), besides the stored ones. A multipart object's plaintext size
    needs its part table: only its stored size is known here."""
    etags, sizes = {info.etag}, {info.size}
    internal = info.meta.internal
    if mode_of(internal) is None or info.parts_count or "-" in info.etag:
        return etags, sizes
    if mode_of(internal) == MODE_S3 and internal.get(F_ETAG):
        etags.add(internal[F_ETAG])
    try:
        sizes.add(plaintext_size(info.size))
    except EncryptionError:
        pass
    return etags, sizes


# -- segments ----------------------------------------------------------------------------

def _chunk_cipher(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), KEY_BYTES, salt, _CHUNK_INFO).derive(key))


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _aad(part_number: int) -> bytes:
    return _AAD + part_number.to_bytes(4, "big")


async def _run(work: Callable[[], list[bytes]], size: int) -> list[bytes]:
    """Small batches inline (cheaper than a thread hop), large ones off the event loop."""
    return await asyncio.to_thread(work) if size >= _THREAD_BATCH else work()


class EncryptingBody(HashedBody):
    """Plaintext in, one stored chunk out (salt, then sealed segments), streamed.

    Holds at most one segment plus one incoming piece. The MD5 is the ciphertext's (what
    the backend stores); `checksums` are the plaintext's, from the body it wraps.
    """

    def __init__(self, body: AsyncIterable[bytes], data_key: bytes, part_number: int = 0,
                 *, plain_md5_to: dict[str, str] | None = None) -> None:
        self._body = body
        self._key = data_key
        self._part = part_number
        self._md5 = hashlib.md5()
        self._hex: str | None = None
        # Where the plaintext's MD5 goes (F_ETAG) once the body has ended.
        self._plain_to = plain_md5_to
        self._plain = hashlib.md5() if plain_md5_to is not None and \
            not isinstance(body, HashedBody) else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        salt = os.urandom(SALT - 4) + self._part.to_bytes(4, "big")
        cipher = _chunk_cipher(self._key, salt)
        aad = _aad(self._part)
        self._md5.update(salt)
        yield salt
        pending = bytearray()
        index = 0
        async for piece in self._body:
            if self._plain is not None:
                self._plain.update(piece)
            pending += piece
            # Keep the last full segment back: only the end of the body says it is the last.
            whole = (len(pending) - 1) // SEGMENT if pending else 0
            if whole <= 0:
                continue
            segs = [bytes(pending[i * SEGMENT:(i + 1) * SEGMENT]) for i in range(whole)]
            del pending[:whole * SEGMENT]
            first = index
            index += whole

            def seal(segs: list[bytes] = segs, first: int = first) -> list[bytes]:
                return [cipher.encrypt(_nonce(first + i, False), s, aad)
                        for i, s in enumerate(segs)]

            out = b"".join(await _run(seal, whole * SEGMENT))
            self._md5.update(out)
            yield out
        last = cipher.encrypt(_nonce(index, True), bytes(pending), aad)
        self._md5.update(last)
        self._hex = self._md5.hexdigest()
        if self._plain_to is not None:
            self._plain_to[F_ETAG] = self._plain.hexdigest() if self._plain is not None \
                else self._body.md5_hex  # type: ignore[attr-defined]
        yield last

    @property
    def md5_hex(self) -> str:
        assert self._hex is not None, "read the body first"
        return self._hex

    @property
    def checksums(self) -> dict[str, str]:
        return self._body.checksums if isinstance(self._body, HashedBody) else {}


# -- reads -------------------------------------------------------------------------------

@dataclass
class Chunk:
    """One stored chunk of an object: where its ciphertext and its plaintext lie."""

    part_number: int | None  # None: not recorded (a one-part upload): the chunk's own says
    stored_offset: int
    stored_size: int
    offset: int  # of its plaintext in the object's plaintext
    size: int

    def last_segment(self) -> int:
        return _segments(self.size) - 1


def layout(parts: list[tuple[int | None, int]]) -> list[Chunk]:
    """Chunks of an object from (part number, stored size) per part (0 for a single PUT)."""
    chunks, stored, plain = [], 0, 0
    for number, size in parts:
        n = plaintext_size(size)
        chunks.append(Chunk(number, stored, size, plain, n))
        stored += size
        plain += n
    return chunks


@dataclass
class ReadPlan:
    """What to fetch for plaintext bytes [first, last]: the stored span, and, when the span
    starts past a chunk's salt, where that salt is."""

    chunks: list[Chunk]  # the chunks the range touches, in order
    first: int
    last: int
    span: tuple[int, int]  # stored bytes to fetch, inclusive
    salt_at: int | None  # stored offset of the first chunk's salt, when not in the span


def plan(chunks: list[Chunk], first: int, last: int) -> ReadPlan:
    """The plan for plaintext [first, last] (last < total; an empty object: first > last)."""
    touched = [c for c in chunks if c.offset <= last and first < c.offset + max(c.size, 1)]
    if not touched:  # an empty object: its one chunk, read whole (the tag is checked)
        touched = chunks[:1]
    head, tail = touched[0], touched[-1]
    seg0 = max(0, first - head.offset) // SEGMENT
    seg1 = min(tail.last_segment(), max(0, last - tail.offset) // SEGMENT)
    if seg0 == 0:
        start, salt_at = head.stored_offset, None
    else:
        start, salt_at = head.stored_offset + SALT + seg0 * (SEGMENT + TAG), head.stored_offset
    end = min(tail.stored_offset + SALT + (seg1 + 1) * (SEGMENT + TAG),
              tail.stored_offset + tail.stored_size) - 1
    return ReadPlan(touched, first, last, (start, end), salt_at)


class DecryptingBody:
    """The plaintext of a ReadPlan's span, opened segment by segment as it streams in.

    A segment that fails its tag (or a span that ends early) raises EncryptionError: the
    caller answers 500 or, mid-body, cuts the response short; wrong bytes are never sent.
    """

    def __init__(self, body: ObjectBody, rplan: ReadPlan, data_key: bytes,
                 salt: bytes | None = None) -> None:
        self._body = body
        self._plan = rplan
        self._key = data_key
        self._salt = salt

    async def close(self) -> None:
        await self._body.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        p = self._plan
        buf = bytearray()
        source = aiter(self._body)

        async def need(n: int) -> bool:
            while len(buf) < n:
                try:
                    buf.extend(await anext(source))
                except StopAsyncIteration:
                    return False
            return True

        for i, chunk in enumerate(p.chunks):
            if i == 0 and p.salt_at is not None:
                salt = self._salt
                seg = max(0, p.first - chunk.offset) // SEGMENT
            else:
                if not await need(SALT):
                    raise EncryptionError("stored object ends inside a chunk's salt")
                salt = bytes(buf[:SALT])
                del buf[:SALT]
                seg = 0
            if salt is None or len(salt) != SALT:
                raise EncryptionError("a chunk's salt is missing")
            number = int.from_bytes(salt[SALT - 4:], "big")
            if chunk.part_number is not None and number != chunk.part_number:
                raise EncryptionError(f"part {number}'s bytes are where part "
                                      f"{chunk.part_number}'s belong")
            cipher = _chunk_cipher(self._key, salt)
            aad = _aad(number)
            final = chunk.last_segment()
            stop = final if chunk is not p.chunks[-1] else \
                min(final, max(0, p.last - chunk.offset) // SEGMENT)
            while seg <= stop:
                # Open every whole segment the buffer holds (at least one) in one batch.
                batch: list[tuple[int, bytes]] = []
                while seg <= stop:
                    length = min(SEGMENT, chunk.size - seg * SEGMENT) + TAG
                    if len(buf) < length:
                        if batch:
                            break
                        if not await need(length):
                            raise EncryptionError("stored object ends inside a segment")
                    batch.append((seg, bytes(buf[:length])))
                    del buf[:length]
                    seg += 1

                def open_all(batch: list[tuple[int, bytes]] = batch, cipher: AESGCM = cipher,
                             final: int = final, aad: bytes = aad) -> list[bytes]:
                    try:
                        return [cipher.decrypt(_nonce(s, s == final), ct, aad)
                                for s, ct in batch]
                    except InvalidTag as exc:
                        raise EncryptionError("a stored segment failed its integrity check "
                                              "(damaged or altered)") from exc

                opened = await _run(open_all, sum(len(ct) for _, ct in batch))
                for (s, _), plain in zip(batch, opened, strict=True):
                    lo = chunk.offset + s * SEGMENT
                    a = max(p.first - lo, 0)
                    b = min(p.last - lo + 1, len(plain))
                    if a < b:
                        yield plain[a:b]
