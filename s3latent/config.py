"""Gateway configuration: command-line flags, environment and the TOML file.

The TOML names in DESIGN.md ("Interfaces") are fixed because tools and docs rely
on them; everything else has a default so `s3latent serve` runs with no file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:9000"
DEFAULT_BACKEND = "file://./s3latent-data"
DEFAULT_ACCESS_KEY = "s3latent"
DEFAULT_SECRET_KEY = "s3latent-secret"
EVENT_LOOPS = ("asyncio", "uvloop", "auto")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def parse_size(value: str | int) -> int:
    """'2GiB' -> 2147483648; plain integers are bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"not a size: {value!r} (use e.g. 512MiB, 2GiB, 1000000)")
    number, unit = float(m.group(1)), (m.group(2) or "B").upper()
    power = "KMGT".index(unit[0]) + 1 if unit[0] in "KMGT" else 0
    mult = (1024 if unit.endswith("IB") else 1000) ** power
    return int(number * mult)


def parse_duration(value: str | int | float) -> float:
    """'250ms' -> 0.25, '1s' -> 1.0, '2m' -> 120.0; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r} (use e.g. 250ms, 1s, 0)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            raise ConfigError(f"not a duration: {value!r} (use e.g. 250ms, 1s, 0)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if not 0.0 <= seconds < float("inf"):
        raise ConfigError(f"not a duration: {value!r} (must be 0 or more)")
    return seconds


@dataclass
class BucketSettings:
    """Per-bucket behaviour; `[buckets."*"]` gives defaults, a bucket's table overrides."""

    codec: str = "auto"  # or lossless, q8, q6, q4, q8p, q6p, q4p, q3p
    policy: str = "perceptual"  # or "exact"
    min_psnr: float = 40.0
    convert: bool = True
    sidecar_suffix: str = ".latent.safetensors"
    # How a converted pair is stored (docs/representations.md): "smallest" (fewest bytes;
    # for a pair that is always the latent, since its sidecar key keeps needing it),
    # "latent", or "avif" (the image as AVIF plus the latent for the sidecar: more bytes,
    # reads need no VAE).
    representation: str = "smallest"
    # Images uploaded without a sidecar are stored as AVIF when that meets the policy and
    # is smaller than the upload (lossy, so off by default), once they have waited
    # `convert_plain_after` for a sidecar.
    convert_plain: bool = False
    convert_plain_after: float = 60.0
    # What becomes of a pair's sidecar key once the pair is admitted: "keep" (it stays
    # readable, rebuilt from the container, which must then hold the latent) or "consume"
    # (an upload-time hint: the key is removed, so the container holds only what the image
    # needs and AVIF can win for pairs). Opt-in: it removes a key the client wrote.
    sidecar: str = "keep"

    def validate(self, name: str) -> None:
        if self.policy not in ("perceptual", "exact"):
            raise ConfigError(f'buckets."{name}".policy must be "perceptual" or "exact"')
        from .latent.codec import CODEC_NAMES

        if self.codec not in (*CODEC_NAMES, "auto"):
            raise ConfigError(f'buckets."{name}".codec must be one of auto, '
                              f"{', '.join(CODEC_NAMES)} (got {self.codec!r})")
        if not self.sidecar_suffix.startswith("."):
            raise ConfigError(f'buckets."{name}".sidecar_suffix must start with "."')
        if self.representation not in REPRESENTATIONS:
            raise ConfigError(f'buckets."{name}".representation must be one of '
                              f"{', '.join(REPRESENTATIONS)} (got {self.representation!r})")
        if not isinstance(self.convert_plain, bool):
            raise ConfigError(f'buckets."{name}".convert_plain must be true or false')
        if self.sidecar not in SIDECAR_MODES:
            raise ConfigError(f'buckets."{name}".sidecar must be one of '
                              f"{', '.join(SIDECAR_MODES)} (got {self.sidecar!r})")


REPRESENTATIONS = ("smallest", "latent", "avif")
SIDECAR_MODES = ("keep", "consume")


@dataclass
class CacheSettings:
    memory: int = 2 * 1024**3
    alpha: float = 0.5
    adaptive: bool = True
    promote_after: int = 2
    policy: str = "default"
    window: int = 2000
    alpha_step: float = 0.05
    alpha_min: float = 0.05
    alpha_max: float = 0.95
    sample_rate: float = 0.1  # share of keys the resizer's shadow caches replay
    # Seconds a cache entry is served without asking the backend whether the object it came
    # from is still there unchanged (bounded staleness across gateways and direct writes);
    # 0: every hit asks.
    revalidate_after: float = 1.0

    def validate(self) -> None:
        """A split outside [0, 1] or an empty shadow sample would fail later, on a read."""
        if not (0.0 <= self.alpha <= 1.0 and 0.0 <= self.alpha_min <= self.alpha_max <= 1.0):
            raise ConfigError("[cache] needs 0 <= alpha <= 1 and 0 <= alpha_min <= alpha_max <= 1")
        if self.policy not in ("default", "lru", "s3fifo"):
            raise ConfigError(f"[cache] policy: default, lru or s3fifo, not {self.policy!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError("[cache] sample_rate must be in (0, 1]")
        if self.window < 1 or self.alpha_step <= 0 or self.memory < 0 or self.promote_after < 1:
            raise ConfigError("[cache] window, alpha_step and promote_after must be positive")
        if not 0.0 <= self.revalidate_after <= 3600.0:
            raise ConfigError("[cache] revalidate_after must be between 0 and 1h (staleness "
                              "is bounded by it)")


@dataclass
class DecodeSettings:
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:0", ...
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_depth: int = 64
    cpu_threads: int = 0  # 0: torch default
    compile: bool = False
    # Bytes all decodes in flight may use together (estimated); a batch waits for room.
    memory_budget: int = 4 * 1024**3
    # New conversions decode in tiles of this many latent pixels per side when a side is
    # longer (or the untiled estimate exceeds memory_budget); 0 turns tiling off.
    tile_size: int = 128
    tile_overlap: int = -1  # latent pixels; -1: per model kind (TAE 8, AutoencoderKL 16)
    # Largest decoded image (pixels) a latent may have to be converted or uploaded alone.
    max_image_pixels: int = 4096 * 4096
    # PNG encoder of new conversions: auto (fpng if installed, else Pillow), pillow, fpng.
    # Also S3LATENT_PNG_ENCODER. Stored renditions keep the encoder they were made with.
    png_encoder: str = "auto"

    def validate(self) -> None:
        """Settings that would fail on the first large decode fail at start instead."""
        if self.memory_budget < 1:
            raise ConfigError("[decode] memory_budget must be positive")
        if self.tile_size < 0 or (self.tile_size and self.tile_size < 16):
            raise ConfigError("[decode] tile_size must be 0 (off) or at least 16")
        if self.tile_overlap > self.tile_size // 2 and self.tile_size:
            raise ConfigError("[decode] tile_overlap may be at most tile_size / 2")
        if self.max_image_pixels < 1:
            raise ConfigError("[decode] max_image_pixels must be positive")
        if self.png_encoder not in ("auto", "pillow", "fpng"):
            raise ConfigError("[decode] png_encoder (S3LATENT_PNG_ENCODER) must be auto, pillow "
                              f"or fpng, not {self.png_encoder!r}")


@dataclass
class ClusterSettings:
    """A fleet of gateways over one backend (docs/cluster.md); absent: a lone gateway.

    The shared secret is never in the file: it comes from S3LATENT_CLUSTER_SECRET.
    """

    self: str = ""  # this node's URL as its peers reach it
    nodes: list[str] = field(default_factory=list)  # every node, itself included
    health_interval_s: float = 1.0
    health_timeout_s: float = 1.0
    fail_after: int = 2  # consecutive failed health checks before a peer leaves the ring
    forward: bool = True  # owner routing of GET/HEAD
    spill: bool = True  # decode spillover to less-loaded peers
    spill_threshold: int = 4  # local decode queue depth above which decodes may spill
    shutdown_grace_s: float = 20.0
    # Connections to all peers together for forwarded reads and renders; a forward that finds
    # none free serves the read here instead of queueing (health checks have their own pool).
    max_peer_connections: int = 64
    # How long a forwarded read waits for the owner's response headers before serving here.
    forward_header_timeout_s: float = 5.0
    # A peer whose forward or render failed stays out of the ring this long, doubling on each
    # further failure up to peer_backoff_max_s, whatever its health checks say.
    peer_backoff_s: float = 5.0
    peer_backoff_max_s: float = 60.0
    secret: str = field(default="", repr=False)  # from the environment only

    def validate(self) -> None:
        """A fleet that cannot agree on its members must not start."""
        if not _node_url_ok(self.self) or self.self.startswith("dns+"):
            raise ConfigError('[cluster] self must be this node\'s URL, e.g. '
                              '"http://10.0.0.1:9000"')
        if not self.nodes or not all(isinstance(n, str) and _node_url_ok(n)
                                     for n in self.nodes):
            raise ConfigError('[cluster] nodes must list every node\'s URL ("http://host:port" '
                              'or "dns+http://name:port")')
        if not (self.health_interval_s > 0 and self.health_timeout_s > 0):
            raise ConfigError("[cluster] health_interval_s and health_timeout_s must be > 0")
        if self.fail_after < 1 or self.spill_threshold < 0 or self.shutdown_grace_s < 0:
            raise ConfigError("[cluster] fail_after must be >= 1, spill_threshold and "
                              "shutdown_grace_s >= 0")
        if self.max_peer_connections < 1 or not (self.forward_header_timeout_s > 0) or not (
                0 < self.peer_backoff_s <= self.peer_backoff_max_s):
            raise ConfigError("[cluster] max_peer_connections must be >= 1, "
                              "forward_header_timeout_s > 0, 0 < peer_backoff_s <= "
                              "peer_backoff_max_s")


@dataclass
class EncryptionSettings:
    """SSE-S3 master keys (docs/encryption.md). `key_file` holds the current key (base64 of
    32 random bytes); `old_key_files` keys that only unwrap objects written under them.
    Without `key_file`, a lone gateway over a local directory makes its own key in the
    directory's state folder; over an S3 backend or in a cluster SSE-S3 is refused."""

    key_file: str | None = None
    old_key_files: list[str] = field(default_factory=list)
    # SSE-C requests over plain HTTP (the customer key in cleartext) answer 400, as on S3;
    # HTTPS is the gateway's own TLS or a trusted proxy's X-Forwarded-Proto (docs/transport.md).
    sse_c_require_tls: bool = True
    # S3LATENT_SSE_KEY_FILE overrides key_file (one config file for several deployments).


_NODE_URL_RE = re.compile(r"^(dns\+)?https?://[^/\s?#]+:\d+/?$")


def _node_url_ok(url: object) -> bool:
    return isinstance(url, str) and bool(_NODE_URL_RE.match(url))


def default_user_id(access_key: str) -> str:
    """A user's canonical ID when the config names none: stable across restarts and nodes
    (64 hex digits, the shape of S3's canonical user IDs)."""
    return hashlib.sha256(b"s3latent-user:" + access_key.encode()).hexdigest()


@dataclass(frozen=True)
class UserInfo:
    """Who a configured user is, as S3 reports owners and grantees (docs/access-control.md)."""

    access_key: str
    id: str
    display_name: str
    email: str | None = None
    admin: bool = False  # operators: every request allowed, whatever ACLs and policies say


def _user_info(table: dict[str, Any]) -> UserInfo:
    known = {"access_key", "secret_key", "id", "display_name", "email", "admin"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [[users]]: {', '.join(sorted(unknown))}")
    key = str(table["access_key"])
    admin = table.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"[[users]] {key}: admin must be true or false")
    email = table.get("email")
    for name in ("id", "display_name", "email"):
        value = table.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"[[users]] {key}: {name} must be a non-empty string")
    return UserInfo(access_key=key, id=table.get("id") or default_user_id(key),
                    display_name=table.get("display_name") or key,
                    email=email.lower() if email else None, admin=admin)


@dataclass
class Config:
    listen: str = DEFAULT_LISTEN
    backend: str = DEFAULT_BACKEND
    domain: str | None = None
    region: str = "us-east-1"
    users: dict[str, str] = field(default_factory=dict)  # access key -> secret key
    # access key -> who (id, display name, email, admin); every key of `users` has one
    # (users_info fills in defaults for users added without one).
    user_info: dict[str, UserInfo] = field(default_factory=dict)
    backend_access_key: str | None = None
    # The S3 backend's bucket for the gateway's own records (S3LATENT_BACKEND_META_BUCKET);
    # None: derived from the backend identity, so gateways sharing an account share it.
    backend_meta_bucket: str | None = None
    backend_secret_key: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    buckets: dict[str, BucketSettings] = field(default_factory=dict)
    cache: CacheSettings = field(default_factory=CacheSettings)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    max_skew_s: int = 900
    log_format: str = "text"  # or "json"
    conversion_workers: int = 2
    sweep_interval_s: float = 300.0
    # Bucket lifecycle (docs/lifecycle.md): how often the expiry worker runs, and how long a
    # lifecycle "day" is. Shorter days are a test and operations setting (like RGW's
    # rgw_lc_debug_interval): expiry dates are then not rounded to midnight UTC.
    lifecycle_interval_s: float = 3600.0
    lifecycle_day_s: float = 86400.0
    # Backend calls: well below botocore's 60 s, so a client of a hung backend
    # gets our 503 in seconds rather than its own SDK timeout.
    backend_connect_timeout_s: float = 2.0
    backend_read_timeout_s: float = 10.0
    backend_max_attempts: int = 3
    # Client connections (s3/connections.py): one client must not exhaust the
    # gateway's file descriptors with connections that never send a request.
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_connections: int = 4096
    # Graceful stop (SIGTERM): requests in flight get this long to finish, cluster or not.
    shutdown_grace_s: float = 20.0
    # "asyncio" (default), "uvloop" (required then), "auto" (uvloop when installed). uvloop
    # is opt-in: on the gateway bench it helped small PUTs but not large GETs
    # (docs/bench-gateway.md, "Cheap speedups").
    event_loop: str = "asyncio"
    # Load balancers in front (CIDR blocks): their X-Forwarded-For / -Proto are believed for
    # aws:SourceIp, aws:SecureTransport and SSE-C's TLS rule (docs/transport.md).
    trusted_proxies: list[str] = field(default_factory=list)
    # HTTPS on the gateway's own socket (PEM files); neither: plain HTTP.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    cluster: ClusterSettings | None = None
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)

    def validate_limits(self) -> None:
        """Zero or negative timeouts would disable a guard silently; refuse them."""
        for name in ("backend_connect_timeout_s", "backend_read_timeout_s",
                     "header_timeout_s", "idle_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"[server] {name} must be > 0")
        if self.backend_max_attempts < 1 or self.max_connections < 1:
            raise ConfigError("[server] backend_max_attempts and max_connections must be >= 1")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"[server] event_loop must be one of {', '.join(EVENT_LOOPS)} "
                              f"(got {self.event_loop!r})")

    def user(self, access_key: str) -> UserInfo | None:
        """The configured user of `access_key` (defaults for one added without details)."""
        info = self.user_info.get(access_key)
        if info is None and access_key in self.users:
            info = UserInfo(access_key, default_user_id(access_key), access_key)
            self.user_info[access_key] = info
        return info

    def user_by_id(self, user_id: str) -> UserInfo | None:
        for key in self.users:
            info = self.user(key)
            if info is not None and info.id == user_id:
                return info
        return None

    def user_by_email(self, email: str) -> UserInfo | None:
        for key in self.users:
            info = self.user(key)
            if info is not None and info.email == email.lower():
                return info
        return None

    def bucket(self, name: str) -> BucketSettings:
        """Most specific match wins: exact name, then glob patterns, then "*"."""
        if name in self.buckets:
            return self.buckets[name]
        for pattern, settings in self.buckets.items():
            if pattern != "*" and fnmatch.fnmatchcase(name, pattern):
                return settings
        return self.buckets.get("*", BucketSettings())

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)


def _dataclass_from(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))}")
    values = dict(table)
    for name in ("memory", "memory_budget"):
        if name in values:
            values[name] = parse_size(values[name])
    for name in ("revalidate_after", "convert_plain_after"):
        if name in values:
            try:
                values[name] = parse_duration(values[name])
            except ConfigError as exc:
                raise ConfigError(f"[{where}] {name}: {exc}") from exc
    return cls(**values)


def load_config(
    path: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """File, then environment, then explicit overrides (command-line flags)."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    cfg = Config()
    server = data.get("server", {})
    for name in ("listen", "backend", "domain", "region", "log_format", "max_skew_s",
                 "event_loop"):
        if name in server:
            setattr(cfg, name, server[name])
    if "conversion_workers" in server:
        cfg.conversion_workers = int(server["conversion_workers"])
    if "sweep_interval_s" in server:
        cfg.sweep_interval_s = float(server["sweep_interval_s"])
    for name in ("lifecycle_interval_s", "lifecycle_day_s"):
        if name in server:
            value = float(server[name])
            if not value > 0:
                raise ConfigError(f"[server] {name} must be a positive number of seconds")
            setattr(cfg, name, value)
    for name in ("backend_connect_timeout_s", "backend_read_timeout_s", "header_timeout_s",
                 "idle_timeout_s", "shutdown_grace_s"):
        if name in server:
            setattr(cfg, name, float(server[name]))
    for name in ("backend_max_attempts", "max_connections"):
        if name in server:
            setattr(cfg, name, int(server[name]))
    if "trusted_proxies" in server:
        proxies = server["trusted_proxies"]
        if not isinstance(proxies, list):
            raise ConfigError("[server] trusted_proxies is a list of CIDR blocks")
        for value in proxies:
            try:
                ipaddress.ip_network(str(value).strip(), strict=False)
            except ValueError as exc:
                raise ConfigError(f"[server] trusted_proxies: not an address or CIDR block: "
                                  f"{value!r}") from exc
        cfg.trusted_proxies = [str(p) for p in proxies]
    for name in ("tls_cert_file", "tls_key_file"):
        if name in server:
            setattr(cfg, name, str(server[name]))
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        raise ConfigError("[server] tls_cert_file and tls_key_file go together")

    for user in data.get("users", []):
        try:
            cfg.users[user["access_key"]] = user["secret_key"]
        except (KeyError, TypeError) as exc:
            raise ConfigError("each [[users]] needs access_key and secret_key") from exc
        cfg.user_info[user["access_key"]] = _user_info(user)

    cfg.models = {str(k): dict(v) for k, v in data.get("models", {}).items()}
    defaults = data.get("buckets", {}).get("*", {})
    for name, table in data.get("buckets", {}).items():
        merged = {**defaults, **table}
        settings = _dataclass_from(BucketSettings, merged, f'buckets."{name}"')
        settings.validate(name)
        cfg.buckets[name] = settings
    if "cache" in data:
        cfg.cache = _dataclass_from(CacheSettings, data["cache"], "cache")
        cfg.cache.validate()
    if "decode" in data:
        cfg.decode = _dataclass_from(DecodeSettings, data["decode"], "decode")
        cfg.decode.validate()

    if "cluster" in data:
        table = dict(data["cluster"])
        if "secret" in table:
            raise ConfigError("[cluster] secret must not be in the config file: set "
                              "S3LATENT_CLUSTER_SECRET in the environment")
        cfg.cluster = _dataclass_from(ClusterSettings, table, "cluster")
        cfg.cluster.nodes = list(cfg.cluster.nodes)
        # One config file for every node: each says who it is in its environment.
        cfg.cluster.self = env.get("S3LATENT_CLUSTER_SELF") or cfg.cluster.self
        cfg.cluster.validate()
        secret = env.get("S3LATENT_CLUSTER_SECRET", "")
        if len(secret) < 16:
            raise ConfigError("[cluster] needs S3LATENT_CLUSTER_SECRET in the environment "
                              "(the fleet's shared secret, at least 16 characters)")
        cfg.cluster.secret = secret
        if "shutdown_grace_s" in table:
            cfg.shutdown_grace_s = float(table["shutdown_grace_s"])

    if "encryption" in data:
        cfg.encryption = _dataclass_from(EncryptionSettings, data["encryption"], "encryption")
        cfg.encryption.old_key_files = [str(p) for p in cfg.encryption.old_key_files]
    if env.get("S3LATENT_SSE_KEY_FILE"):
        cfg.encryption.key_file = env["S3LATENT_SSE_KEY_FILE"]

    access = env.get("S3LATENT_ACCESS_KEY")
    secret = env.get("S3LATENT_SECRET_KEY")
    if access and secret:
        cfg.users[access] = secret
    elif access or secret:
        raise ConfigError("set both S3LATENT_ACCESS_KEY and S3LATENT_SECRET_KEY, or neither")
    if not cfg.users:
        cfg.users[DEFAULT_ACCESS_KEY] = DEFAULT_SECRET_KEY
    ids = [cfg.user(key).id for key in cfg.users]  # type: ignore[union-attr]
    if len(set(ids)) != len(ids):
        raise ConfigError("[[users]]: two users have the same id")
    emails = [u.email for u in cfg.user_info.values() if u.email]
    if len(set(emails)) != len(emails):
        raise ConfigError("[[users]]: two users have the same email")
    cfg.backend_access_key = env.get("S3LATENT_BACKEND_ACCESS_KEY", cfg.backend_access_key)
    cfg.backend_secret_key = env.get("S3LATENT_BACKEND_SECRET_KEY", cfg.backend_secret_key)
    cfg.backend_meta_bucket = (env.get("S3LATENT_BACKEND_META_BUCKET")
                               or server.get("backend_meta_bucket") or cfg.backend_meta_bucket)
    if env.get("S3LATENT_EVENT_LOOP"):
        cfg.event_loop = env["S3LATENT_EVENT_LOOP"].strip().lower()
    if env.get("S3LATENT_PNG_ENCODER"):
        cfg.decode.png_encoder = env["S3LATENT_PNG_ENCODER"].strip().lower()
    cfg.decode.validate()

    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    cfg.listen_host_port  # noqa: B018 - validates early
    cfg.validate_limits()
    return cfg
