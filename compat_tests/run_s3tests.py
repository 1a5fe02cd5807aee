#!/usr/bin/env python3
"""Run the ceph/s3-tests suite against the s3latent gateway and, in the same run, SeaweedFS.

The suite cannot be vendored, so it is taken from a checkout (see compat_tests/README.md).
SeaweedFS direct is the baseline: a test that passes there but fails through the gateway
(which sits in front of the same SeaweedFS) is a gateway bug or a documented gap.

    python compat_tests/run_s3tests.py /tmp/s3-tests --workers 2 --json /tmp/s3t.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from s3latent.bench.servers import GatewayServer, SeaweedServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Where the S3 tests live; older checkouts kept the boto3 tests in s3tests_boto3/.
SUITE_FILES = ("s3tests/functional/test_s3.py", "s3tests_boto3/functional/test_s3.py")

# Modules the suite imports that our own environment may lack (PyPI name -> module name).
SUITE_REQUIREMENTS = {
    "munch": "munch",
    "isodate": "isodate",
    "pytz": "pytz",
    "python-dateutil": "dateutil",
    "boto3": "boto3",
    "requests": "requests",
    "pytest": "pytest",
}

# The users the suite signs as. The gateway accepts them all through `[[users]]`; SeaweedFS
# gets them as identities. All of them may use every bucket: the gateway forwards with one
# backend identity, so the direct baseline gets the same (flat) permission model.
USERS: dict[str, dict[str, str]] = {
    "s3 main": {
        "display_name": "M. Tester",
        "user_id": "testid",
        "email": "tester@example.com",
        "access_key": "0555b35654ad1656d804",
        "secret_key": "h7GhxuBLTrlhVUyxSPUKUV8r/2EI4ngqJxD7iBdBYLhwluN30JaT3Q==",
    },
    "s3 alt": {
        "display_name": "john.doe",
        "user_id": "56789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234",
        "email": "john.doe@example.com",
        "access_key": "NOPQRSTUVWXYZABCDEFG",
        "secret_key": "nopqrstuvwxyzabcdefghijklmnabcdefghijklm",
    },
    "s3 tenant": {
        "display_name": "testx$tenanteduser",
        "user_id": "testx$9876543210abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "email": "tenanteduser@example.com",
        "access_key": "HIJKLMNOPQRSTUVWXYZA",
        "secret_key": "opqrstuvwxyzabcdefghijklmnopqrstuvwxyzab",
        "tenant": "testx",
    },
    "iam": {
        "display_name": "youruseridhere",
        "user_id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "email": "s3@example.com",
        "access_key": "ABCDEFGHIJKLMNOPQRST",
        "secret_key": "abcdefghijklmnopqrstuvwxyzabcdefghijklmn",
    },
    "iam root": {
        "user_id": "RGW11111111111111111",
        "email": "account1@example.com",
        "access_key": "AAAAAAAAAAAAAAAAAAaa",
        "secret_key": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    },
    "iam alt root": {
        "user_id": "RGW22222222222222222",
        "email": "account2@example.com",
        "access_key": "BBBBBBBBBBBBBBBBBBbb",
        "secret_key": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    },
}
BACKEND_KEYS = ("s3latent-backend", "s3latent-backend-secret-0123456789")

# Features outside the gateway's scope (and mostly outside SeaweedFS's): excluded by default.
# Markers first; `-k` keywords catch the tests the suite does not mark.
DEFAULT_EXCLUDED_MARKERS = (
    "fails_on_aws",  # RGW-specific behaviour that AWS itself does not have
    "appendobject",
    "bucket_logging",
    "bucket_logging_cleanup",
    "fails_without_logging_rollover",
    "lifecycle",
    "lifecycle_expiration",
    "lifecycle_transition",
    "cloud_transition",
    "cloud_restore",
    "encryption",
    "bucket_encryption",
    "sse_s3",
    "bucket_policy",
    "user_policy",
    "role_policy",
    "session_policy",
    "group_policy",
    "iam_account",
    "iam_cross_account",
    "iam_role",
    "iam_tenant",
    "iam_user",
    "test_of_sts",
    "webidentity_test",
    "abac_test",
    "s3select",
    "s3website",
    "s3website_routing_rules",
    "s3website_redirect_location",
    "sns",
    "storage_class",
    "object_ownership",
    "target_by_bucket",
)
DEFAULT_EXCLUDED_KEYWORDS = (
    "acl",
    "grant",
    "policy",
    "website",
    "lifecycle",
    "sse_c",
    "sse_kms",
    "encrypt",
    "logging",
    "torrent",
    "public_block",
    "public_access",
    "restore",
)


@dataclass
class TestResult:
    """One test's outcome on one target."""

    name: str
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    seconds: float = 0.0


@dataclass
class TargetRun:
    """The suite's results on one target."""

    target: str
    endpoint: str
    results: dict[str, TestResult] = field(default_factory=dict)
    returncode: int = 0
    seconds: float = 0.0
    log: str = ""
    versions_listing: str = ""
    cleanup_failures: list[dict[str, str]] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results.values() if r.outcome == outcome)

    def passed(self) -> set[str]:
        return {n for n, r in self.results.items() if r.outcome == "passed"}

    def summary(self) -> dict[str, int]:
        return {
            "collected": len(self.results),
            "passed": self.count("passed"),
            "failed": self.count("failed"),
            "errors": self.count("error"),
            "skipped": self.count("skipped"),
        }


# s3tests.conf's `lc_debug_interval` (the suite's default too) and the gateway's lifecycle
# pass interval: see docs/lifecycle.md.
LC_DEBUG_INTERVAL = 10
LC_PASS_S = 2


def gateway_config_text() -> str:
    """The gateway's TOML config: every suite user may sign."""
    lines = ["# written by compat_tests/run_s3tests.py: the s3-tests users",
             # A lifecycle "day" as long as the suite's lc_debug_interval (its tests sleep
             # a few of those and expect expiry), judged every LC_PASS_S seconds.
             "[server]",
             f"lifecycle_day_s = {LC_DEBUG_INTERVAL}",
             f"lifecycle_interval_s = {LC_PASS_S}",
             # The suite sends SSE-C over plain HTTP (RGW: rgw_crypt_require_ssl = false);
             # S3 and the gateway's default refuse customer keys in cleartext.
             "[encryption]",
             "sse_c_require_tls = false",
             ""]
    for user in USERS.values():
        lines += [
            "[[users]]",
            f"access_key = {json.dumps(user['access_key'])}",
            f"secret_key = {json.dumps(user['secret_key'])}",
            # The suite checks owners and grants against its configured IDs and names.
            f"id = {json.dumps(user['user_id'])}",
            f"display_name = {json.dumps(user.get('display_name') or user['access_key'])}",
            f"email = {json.dumps(user['email'])}",
            "",
        ]
    return "\n".join(lines)


def start_seaweedfs(workdir: Path) -> SeaweedServer:
    """SeaweedFS with the suite's users as S3 identities (the direct baseline)."""
    users = [(s, u["access_key"], u["secret_key"]) for s, u in USERS.items()]
    return SeaweedServer(
        workdir / "seaweedfs", access_key=BACKEND_KEYS[0], secret_key=BACKEND_KEYS[1],
        identities=users,
    ).start()


def start_gateway(workdir: Path, backend: str, backend_keys: tuple[str, str] | None,
                  name: str) -> GatewayServer:
    """A gateway over `backend` that accepts every suite user (and no other key)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return GatewayServer(
        backend, workdir, backend_keys=backend_keys, access_key=None,
        config_text=gateway_config_text(), env={"PYTHONPATH": pythonpath}, name=name,
    ).start()


def write_s3tests_conf(path: Path, endpoint: str, bucket_prefix: str) -> Path:
    """The suite's INI config: DEFAULT host/port plus every user section it reads."""
    host_port = endpoint.split("://", 1)[1]
    host, _, port = host_port.rpartition(":")
    lines = [
        "[DEFAULT]",
        f"host = {host}",
        f"port = {port}",
        f"is_secure = {endpoint.startswith('https')}",
        "ssl_verify = False",
        "",
        "[fixtures]",
        f"bucket prefix = {bucket_prefix}",
        "iam name prefix = s3-tests-",
        "iam path prefix = /s3-tests/",
        "",
    ]
    for section, user in USERS.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in user.items()]
        if section == "s3 main":
            lines.append("api_name = default")
            lines.append(f"lc_debug_interval = {LC_DEBUG_INTERVAL}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def find_suite(checkout: Path) -> Path:
    """The test_s3.py of a checkout, whichever layout it has."""
    for rel in SUITE_FILES:
        if (checkout / rel).is_file():
            return checkout / rel
    raise SystemExit(
        f"{checkout}: no {' or '.join(SUITE_FILES)}; "
        "clone it with: git clone https://github.com/ceph/s3-tests"
    )


def missing_modules(python: str, modules: Iterable[str]) -> list[str]:
    code = (
        "import importlib.util, sys\n"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    )
    out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, check=True)
    return out.stdout.split()


def suite_python(venv: Path, want_xdist: bool) -> str:
    """An interpreter that can import the suite: ours if it can, else a side venv.

    The side venv sees our site-packages (boto3, pytest) and adds only what is missing, so
    nothing is installed into our own environment.
    """
    wanted = dict(SUITE_REQUIREMENTS)
    if want_xdist:
        wanted["pytest-xdist"] = "xdist"
    if not missing_modules(sys.executable, wanted.values()):
        return sys.executable
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} for the suite's requirements", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
    missing = missing_modules(str(py), wanted.values())
    if missing:
        pkgs = [pkg for pkg, mod in wanted.items() if mod in missing]
        print(f"installing into {venv}: {' '.join(pkgs)}", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], check=True)
    return str(py)


def default_keyword_filter() -> str:
    return " and ".join(f"not {k}" for k in DEFAULT_EXCLUDED_KEYWORDS)


def default_marker_filter() -> str:
    return " and ".join(f"not {m}" for m in DEFAULT_EXCLUDED_MARKERS)


def pytest_args(
    suite: Path,
    junit: Path,
    *,
    keyword: str | None,
    markers: str | None,
    workers: int,
    timeout: float,
    has_timeout: bool,
    extra: Sequence[str] = (),
) -> list[str]:
    args = [
        "-m",
        "pytest",
        str(suite),
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "addopts=",
        "--junitxml",
        str(junit),
        "-o",
        "junit_family=xunit2",
    ]
    if keyword:
        args += ["-k", keyword]
    if markers:
        args += ["-m", markers]
    if workers > 1:
        args += ["-n", str(workers)]
    if has_timeout and timeout > 0:
        args += ["--timeout", str(int(timeout))]
    return [*args, *extra]


_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def parse_junit(path: Path) -> dict[str, TestResult]:
    """Test name -> outcome; a test reported twice (call + teardown error) keeps the worst."""
    results: dict[str, TestResult] = {}
    if not path.exists():
        return results
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        outcome, message = "passed", ""
        for child in case:
            tag = child.tag
            if tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or (child.text or "")).strip()
                break
        res = TestResult(name, outcome, message[:400], float(case.get("time", 0) or 0))
        prev = results.get(name)
        if prev is None or _RANK[outcome] > _RANK[prev.outcome]:
            results[name] = res
    return results


def run_suite(
    target: str,
    endpoint: str,
    python: str,
    suite: Path,
    workdir: Path,
    args: argparse.Namespace,
    has_timeout: bool,
) -> TargetRun:
    """One pytest run of the suite against one endpoint."""
    conf = write_s3tests_conf(workdir / f"s3tests-{target}.conf", endpoint, args.bucket_prefix)
    junit = workdir / f"junit-{target}.xml"
    log = workdir / f"pytest-{target}.log"
    cmd = [
        python,
        *pytest_args(
            suite,
            junit,
            keyword=args.keyword,
            markers=args.markers,
            workers=args.workers,
            timeout=args.timeout,
            has_timeout=has_timeout,
            extra=args.pytest_arg,
        ),
    ]
    env = dict(os.environ, S3TEST_CONF=str(conf), PYTHONDONTWRITEBYTECODE="1")
    if not args.strict_cleanup:
        cmd += ["-p", "s3tests_cleanup"]
        cleanup_log = workdir / f"cleanup-{target}.jsonl"
        cleanup_log.unlink(missing_ok=True)
        env["S3LATENT_CLEANUP_LOG"] = str(cleanup_log)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    for var in (
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        env.pop(var, None)
    env["AWS_CONFIG_FILE"] = str(workdir / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "no-aws-credentials")
    print(f"[{target}] {endpoint}: pytest {' '.join(cmd[3:])}", file=sys.stderr)
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=suite.parents[2],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(args.total_timeout or None)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        except subprocess.TimeoutExpired:
            print(f"[{target}] suite ran past {args.total_timeout}s; stopping it", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGINT)  # pytest still writes its junit report
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    run = TargetRun(target, endpoint, parse_junit(junit), rc, time.monotonic() - started, str(log))
    run.versions_listing = probe_versions_listing(endpoint)
    cleanup_log = workdir / f"cleanup-{target}.jsonl"
    if cleanup_log.exists():
        first: dict[str, dict[str, str]] = {}
        for line in cleanup_log.read_text().splitlines():
            entry = json.loads(line)
            first.setdefault(entry["bucket"], entry)
        run.cleanup_failures = list(first.values())
    print(f"[{target}] done in {run.seconds:.0f}s: {run.summary()}", file=sys.stderr)
    return run


def probe_versions_listing(endpoint: str) -> str:
    """Whether ListObjectVersions works: the suite's own bucket cleanup depends on it."""
    import boto3
    from botocore.exceptions import ClientError

    user = USERS["s3 main"]
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=user["access_key"],
        aws_secret_access_key=user["secret_key"],
    )
    bucket = f"s3latent-probe-{os.getpid()}-{int(time.time())}"
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"v")
        try:
            listing = client.list_object_versions(Bucket=bucket)
            versions = [(v["Key"], v.get("VersionId")) for v in listing.get("Versions", [])]
            result = f"supported: {versions}"
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            result = f"{status} {err.get('Code')}"
        client.delete_object(Bucket=bucket, Key="k")
        client.delete_bucket(Bucket=bucket)
        return result
    except Exception as exc:
        return f"probe failed: {exc}"


def load_baseline(path: Path) -> TargetRun:
    """The seaweedfs run of an earlier --json report."""
    data = json.loads(path.read_text())["runs"]["seaweedfs"]
    run = TargetRun("seaweedfs", data["endpoint"], returncode=data["returncode"])
    run.results = {n: TestResult(**t) for n, t in data["tests"].items()}
    run.versions_listing = data.get("versions_listing", "")
    run.log = f"baseline from {path}"
    return run


def compare(direct: TargetRun, gateway: TargetRun) -> dict[str, object]:
    """What the gateway loses against the store it fronts."""
    base = direct.passed()
    lost = sorted(
        n for n in base if gateway.results.get(n, TestResult(n, "missing")).outcome != "passed"
    )
    gained = sorted(gateway.passed() - base)
    kept = len(base) - len(lost)
    return {
        "direct_passed": len(base),
        "gateway_passed_of_those": kept,
        "ratio": (kept / len(base)) if base else 1.0,
        "pass_direct_fail_gateway": lost,
        "pass_gateway_fail_direct": gained,
    }


def format_table(runs: Sequence[TargetRun]) -> str:
    cols = ("collected", "passed", "failed", "errors", "skipped")
    rows = ["| target | " + " | ".join(cols) + " | pass % |", "|---|" + "---:|" * (len(cols) + 1)]
    for run in runs:
        s = run.summary()
        ran = s["collected"] - s["skipped"]
        pct = f"{100 * s['passed'] / ran:.1f}" if ran else "-"
        rows.append(f"| {run.target} | " + " | ".join(str(s[c]) for c in cols) + f" | {pct} |")
    return "\n".join(rows)


def report(runs: Sequence[TargetRun], comparisons: dict[str, dict[str, object]]) -> str:
    out = [format_table(runs), ""]
    for run in runs:
        out.append(f"{run.target}: ListObjectVersions {run.versions_listing or 'not probed'}")
        for failure in run.cleanup_failures:
            out.append(f"  could not delete bucket {failure['bucket']}: {failure['reason']}")
    out.append("")
    by_name = {r.target: r for r in runs}
    for label, comp in comparisons.items():
        gw_name = label.split(" vs ")[0]
        lost = comp["pass_direct_fail_gateway"]
        assert isinstance(lost, list)
        out.append(
            f"{label}: the gateway passes {comp['gateway_passed_of_those']} of the "
            f"{comp['direct_passed']} tests SeaweedFS passes directly "
            f"({100 * float(comp['ratio']):.1f}%)"
        )  # type: ignore[arg-type]
        if lost:
            out.append(f"pass direct, fail through {gw_name} ({len(lost)}):")
            gw = by_name[gw_name]
            for name in lost:
                res = gw.results.get(name)
                why = (res.message.splitlines() or [""])[0][:160] if res else "not run"
                out.append(f"  {name}: {res.outcome if res else 'missing'}: {why}")
        gained = comp["pass_gateway_fail_direct"]
        assert isinstance(gained, list)
        if gained:
            out.append(f"pass through {gw_name}, fail direct ({len(gained)}): " + ", ".join(gained))
        out.append("")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkout", type=Path, help="path of a ceph/s3-tests checkout")
    p.add_argument(
        "--targets",
        default="gateway,seaweedfs",
        help="comma list of gateway (over SeaweedFS), seaweedfs (direct), "
        "gateway-local (over a local directory) (default: %(default)s)",
    )
    p.add_argument(
        "--filter",
        "-k",
        dest="keyword",
        default=None,
        help="pytest -k expression, ANDed with the default exclusions unless --all",
    )
    p.add_argument(
        "--markers",
        "-m",
        default=None,
        help="pytest -m expression, ANDed with the default exclusions unless --all",
    )
    p.add_argument(
        "--all", action="store_true", help="do not exclude the features outside the gateway's scope"
    )
    p.add_argument(
        "--workers",
        "-n",
        type=int,
        default=1,
        help="pytest-xdist workers per target (installed into the side venv)",
    )
    p.add_argument("--timeout", type=float, default=120, help="seconds per test")
    p.add_argument(
        "--total-timeout",
        type=float,
        default=3600,
        help="seconds per target before the run is stopped (0: none)",
    )
    p.add_argument("--json", type=Path, help="write per-test outcomes and the comparison")
    p.add_argument(
        "--baseline",
        type=Path,
        help="take the seaweedfs results from an earlier --json file instead of running it",
    )
    p.add_argument(
        "--write-expected",
        type=Path,
        help="write the names of the tests the gateway passes, one a line",
    )
    p.add_argument(
        "--check-expected",
        type=Path,
        help="exit 1 if a test named in this file does not pass through the gateway",
    )
    p.add_argument(
        "--min-ratio",
        type=float,
        default=0.0,
        help="exit 1 if the gateway passes fewer than this share of the tests "
        "SeaweedFS passes directly (e.g. 0.95)",
    )
    p.add_argument(
        "--venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "s3latent-s3tests-venv",
        help="side venv for the suite's requirements, used only if we lack them",
    )
    p.add_argument("--workdir", type=Path, help="keep configs, logs and data here")
    p.add_argument("--bucket-prefix", default="s3t-{random}-")
    p.add_argument(
        "--strict-cleanup",
        action="store_true",
        help="run the suite's own bucket cleanup as is (it needs ListObjectVersions); by "
        "default a plugin falls back to ListObjectsV2 where that API is NotImplemented",
    )
    p.add_argument(
        "--pytest-arg", action="append", default=[], help="extra argument for pytest (repeatable)"
    )
    args = p.parse_args(argv)
    if not args.all:
        args.keyword = " and ".join(f"({e})" for e in (default_keyword_filter(), args.keyword) if e)
        args.markers = " and ".join(f"({e})" for e in (default_marker_filter(), args.markers) if e)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - {"gateway", "seaweedfs", "gateway-local"}
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suite = find_suite(args.checkout.resolve())
    python = suite_python(args.venv, args.workers > 1)
    has_timeout = not missing_modules(python, ["pytest_timeout"])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="s3latent-s3tests-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", file=sys.stderr)

    runs: list[TargetRun] = []
    weed: SeaweedServer | None = None
    servers: list[GatewayServer] = []
    try:
        if {"gateway", "seaweedfs"} & set(args.targets):
            weed = start_seaweedfs(workdir)
            print(f"SeaweedFS at {weed.endpoint}", file=sys.stderr)
        for target in args.targets:
            if target == "seaweedfs":
                assert weed is not None
                runs.append(
                    run_suite(target, weed.endpoint, python, suite, workdir, args, has_timeout)
                )
                continue
            if target == "gateway":
                assert weed is not None
                gw = start_gateway(workdir, weed.endpoint, BACKEND_KEYS, target)
            else:
                gw = start_gateway(workdir, f"file://{workdir / 'gateway-local-data'}", None,
                                   target)
            servers.append(gw)
            runs.append(run_suite(target, gw.endpoint, python, suite, workdir, args, has_timeout))
            gw.stop()
    finally:
        for gw in servers:
            gw.stop()
        if weed is not None:
            weed.stop()

    if args.baseline and "seaweedfs" not in {r.target for r in runs}:
        runs.append(load_baseline(args.baseline))
    by_name = {r.target: r for r in runs}
    comparisons: dict[str, dict[str, object]] = {}
    if "seaweedfs" in by_name:
        for gw_name in ("gateway", "gateway-local"):
            if gw_name in by_name:
                comparisons[f"{gw_name} vs seaweedfs"] = compare(
                    by_name["seaweedfs"], by_name[gw_name]
                )
    print(report(runs, comparisons))

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "suite": str(suite),
                    "keyword": args.keyword,
                    "markers": args.markers,
                    "runs": {
                        r.target: {
                            "endpoint": r.endpoint,
                            "seconds": round(r.seconds, 1),
                            "returncode": r.returncode,
                            "versions_listing": r.versions_listing,
                            "cleanup_failures": r.cleanup_failures,
                            "log": r.log,
                            **r.summary(),
                            "tests": {n: asdict(t) for n, t in sorted(r.results.items())},
                        }
                        for r in runs
                    },
                    "comparisons": comparisons,
                },
                indent=1,
            )
        )
    status = 0
    gw_run = by_name.get("gateway") or by_name.get("gateway-local")
    if args.write_expected and gw_run is not None:
        args.write_expected.write_text("".join(f"{n}\n" for n in sorted(gw_run.passed())))
    if args.check_expected and gw_run is not None:
        expected = {
            ln.strip()
            for ln in args.check_expected.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        }
        regressed = sorted(n for n in expected & set(gw_run.results) if n not in gw_run.passed())
        if regressed:
            print(f"REGRESSED ({len(regressed)}): {', '.join(regressed)}")
            status = 1
    for comp in comparisons.values():
        if float(comp["ratio"]) < args.min_ratio:  # type: ignore[arg-type]
            print(
                f"gateway/direct ratio {float(comp['ratio']):.3f} "  # type: ignore[arg-type]
                f"is below --min-ratio {args.min_ratio}"
            )
            status = 1
    if not runs or any(not r.results for r in runs):
        print("a target produced no results; see the pytest logs in the work directory")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
