"""One install name: the wheel holds `mammo_fl/...` only, with its presets and the Flower app shim."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("common", "server", "client", "simulations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("mammo_fl-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def wheel_names(wheel: zipfile.ZipFile) -> list[str]:
    return wheel.namelist()


def test_nothing_but_mammo_fl_at_the_top_of_site_packages(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    assert tops == {"mammo_fl"} | {t for t in tops if t.endswith(".dist-info")}
    for layer in LAYERS:
        assert f"mammo_fl/{layer}/__init__.py" in wheel_names


def test_every_source_package_is_in_the_wheel(wheel_names):
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            assert f"mammo_fl/{init.relative_to(ROOT).as_posix()}" in wheel_names


def test_presets_and_flower_app_travel_with_the_package(wheel_names):
    assert "mammo_fl/common/presets/train_cpu.toml" in wheel_names
    assert "mammo_fl/server/flower_app/pyproject.toml" in wheel_names


def test_console_scripts_point_into_mammo_fl(wheel, wheel_names):
    (entry,) = [n for n in wheel_names if n.endswith("entry_points.txt")]
    scripts = dict(line.split(" = ") for line in wheel.read(entry).decode().splitlines() if " = " in line)
    assert set(scripts) == {"mammo-data", "mammo-train", "mammo-server", "mammo-client", "mammo-sim"}
    assert all(target.startswith("mammo_fl.") for target in scripts.values())
