"""The data relay ships from the top of its source tree: ``firmware_profiles/`` and ``hw/``.

Radio presets, AT command sets and wiring notes sit at the top of the repository, where a
hobbyist looks for them. The wheel maps both folders into the package (``relay.firmware_profiles``
and ``relay.hw``, see ``package-dir`` in pyproject.toml), so an installed relay reads them from
there; a source checkout (``PYTHONPATH``, an editable install) reads the folders themselves. One
copy, and an edited TOML file takes effect without reinstalling.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

FOLDERS = ("firmware_profiles", "hw")
_CHECKOUT = Path(__file__).resolve().parent.parent


def folder(name: str) -> Traversable:
    """The shipped folder ``name`` (one of FOLDERS), from the checkout or the installed package."""
    if name not in FOLDERS:
        raise ValueError(f"no shipped folder {name!r} (known: {', '.join(FOLDERS)})")
    here = _CHECKOUT / name
    if (_CHECKOUT / "pyproject.toml").is_file() and here.is_dir():
        return here
    return resources.files(f"relay.{name}")


def read_text(name: str, filename: str) -> str:
    """The text of ``filename`` (a path inside the folder ``name``), as UTF-8."""
    return folder(name).joinpath(filename).read_text(encoding="utf-8")
