"""The built wheel carries firmware_profiles/ and hw/ (top of the repo) and loads them; an
editable install reads them in place.

Builds the wheel the way ``pip install .`` does (an isolated build with the build backend from
the package index pip is configured with), then imports relay from the unpacked wheel in a
fresh process, far from the source tree, so only the packaged copies can be read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHIPPED = {
    "relay/firmware_profiles/at.toml",
    "relay/firmware_profiles/kiss.toml",
    "relay/firmware_profiles/lora.toml",
    "relay/firmware_profiles/meshtastic.toml",
    "relay/firmware_profiles/regions.toml",
    "relay/hw/devices.toml",
    "relay/hw/WIRING.md",
    "relay/hw/udev/99-relay.rules",
}

PROBE = """
import json, sys
from pathlib import Path
import relay
from relay import shipped
from relay.links import devices
from relay.links.at.profile import profiles
from relay.links.kiss.profile import kiss_profile
from relay.radio.profiles import preset
print(json.dumps({
    "relay": relay.__file__,
    "hw": str(shipped.folder("hw")),
    "preset_mtu": preset("MEDIUM_FAST").mtu,
    "at_profiles": sorted(profiles()),
    "kiss_mtu": kiss_profile().mtu,
    "usb_ids": len(devices.catalog()["usb"]),
    "wiring": "M0" in shipped.read_text("hw", "WIRING.md"),
}))
"""


def _copy_source(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("relay", "firmware_profiles", "hw"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    return src


def _pip(*args: str) -> None:
    """Run this interpreter's pip (an isolated build, as ``pip install .`` does)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _probe(
    code: str, *args: str, cwd: Path, env: dict[str, str], flags: tuple[str, ...] = ()
) -> dict:
    """Run ``code`` in a fresh interpreter and return the JSON it prints."""
    done = subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_wheel_ships_firmware_profiles_and_hw_and_loads_them(tmp_path: Path) -> None:
    src = _copy_source(tmp_path)  # a copy: building leaves build/ and egg-info behind
    out = tmp_path / "dist"
    _pip("wheel", "--no-deps", "-q", "-w", str(out), str(src))
    (wheel,) = out.glob("relay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= SHIPPED, SHIPPED - names
    # Every module of the source tree is in the wheel: the package list in pyproject.toml is
    # explicit, and a package missing from it would otherwise be noticed only by users.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "relay").rglob("*.py")}
    assert modules <= names, sorted(modules - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = _probe(PROBE, cwd=elsewhere, env=env)
    assert Path(got["relay"]).is_relative_to(site)
    assert Path(got["hw"]) == site / "relay" / "hw"  # the packaged copy, not a checkout's
    assert got["preset_mtu"] > 0 and got["kiss_mtu"] > 0 and got["usb_ids"] > 0
    assert {"rylr998", "rak3172", "e22"} <= set(got["at_profiles"])
    assert got["wiring"]


EDITABLE_PROBE = """
import json, site, sys
site.addsitedir(sys.argv[1])
from importlib import resources
import relay
from relay import shipped
from relay.radio.profiles import preset
print(json.dumps({
    "relay": relay.__file__,
    "resources": str(resources.files("relay.firmware_profiles")),
    "hw": str(shipped.folder("hw")),
    "preset_mtu": preset("SHORT_FAST").mtu,
}))
"""


def test_editable_install_reads_the_folders_in_place(tmp_path: Path) -> None:
    src = _copy_source(tmp_path)
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip first uninstalls this environment's own relay.
    _pip(
        "install", "--no-deps", "--ignore-installed", "-q", "-e", str(src), "--prefix", str(prefix)
    )
    (site_dir,) = prefix.glob("lib/python3*/site-packages")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: only the editable install's site directory, not this environment's own relay.
    got = _probe(EDITABLE_PROBE, str(site_dir), cwd=tmp_path, env=env, flags=("-S",))
    assert Path(got["relay"]).is_relative_to(src / "relay")
    assert Path(got["resources"]) == src / "firmware_profiles"  # setuptools' mapping
    assert Path(got["hw"]) == src / "hw"
    assert got["preset_mtu"] > 0
