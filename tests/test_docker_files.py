"""The Docker files, checked without a Docker daemon (none on the build machines): the compose file
renders with docker-compose and keeps each hospital's key and data to itself; the Dockerfile is
lint-clean and its images run unprivileged under an init process."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} not installed (.ci/run and the dev extras install it)")
    return found


@pytest.fixture(scope="module")
def compose():
    import yaml

    out = subprocess.run([_tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "config"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _volumes(service: dict) -> list[str]:
    return [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service.get("volumes", [])]


def test_compose_brings_up_a_coordinator_and_three_hospitals_with_tls(compose):
    services = compose["services"]
    assert {"coordinator", "hospital-1", "hospital-2", "hospital-3"} <= set(services)
    coordinator = " ".join(services["coordinator"]["command"])
    assert "--home /coordinator" in coordinator and "--insecure" not in coordinator
    for n in (1, 2, 3):
        cmd = " ".join(services[f"hospital-{n}"]["command"])
        assert f"--ca /ca/ca.pem --key /keys/hospital-{n}.key" in cmd and "--insecure" not in cmd
        assert "--state-dir /state" in cmd


def test_every_service_is_locked_down(compose):
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_hospital_keys_and_data_stay_with_their_hospital(compose):
    services = compose["services"]
    for name, service in services.items():
        for vol in _volumes(service):
            source = vol.split(":")[0]
            owner = re.match(r"(hospital-\d)-(keys|data|state)$", source)
            if owner:
                assert name.startswith(owner.group(1)), f"{name} mounts {source}"
    for n in (1, 2, 3):
        vols = _volumes(services[f"hospital-{n}"])
        assert f"hospital-{n}-data:/data:ro" in vols and f"hospital-{n}-keys:/keys:ro" in vols
        assert f"hospital-{n}-state:/state:rw" in vols  # state outside the read-only data mount
    # the coordinator side sees only public keys and hands out only ca.pem
    assert "pubkeys:/pubkeys:ro" in _volumes(services["register"])
    assert "ca-outbox:/outbox:rw" in _volumes(services["coordinator-init"])


def test_dockerfile_is_lint_clean_and_unprivileged():
    out = subprocess.run([_tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    targets = {stage.split()[2]: stage for stage in stages}
    for target in ("site", "coordinator"):
        assert "USER 10001:10001" in targets[target] and 'ENTRYPOINT ["tini", "--"' in targets[target]
    assert "nginx" in targets["coordinator"] and "MAMMO_FL_STATE_DIR=/state" in targets["site"]
    assert "COPY" not in text.split("FROM base AS site")[1]  # no data or keys baked into an image
