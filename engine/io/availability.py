"""Which outputs this machine can offer before anything is opened: one answer for `sdv2 doctor` and the app.

    low_latency_outputs()   # {"spout": Availability(...), "syphon": ..., "ndi": ...}

Spout needs Windows and ``SpoutGL``, Syphon macOS and ``syphon-python`` (engine/io/texshare.py), NDI the ``cyndilib``
wheel, which bundles the NDI runtime (engine/io/ndi.py). An unavailable output says why in ``detail`` and how to get
it in ``fix``. Nothing here opens a device or a network sender.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass

__all__ = ["LABELS", "LOW_LATENCY", "NDI_INSTALL", "PLATFORMS", "TEXSHARE_MODULES", "Availability",
           "low_latency_outputs", "ndi_availability", "texshare_availability"]

LOW_LATENCY = ("spout", "syphon", "ndi")
PLATFORMS = {"spout": "win32", "syphon": "darwin"}  # the only platform each exists on (NDI: everywhere)
LABELS = {"spout": "Spout", "syphon": "Syphon", "ndi": "NDI"}
NDI_INSTALL = "pip install 'streamdiffusion-studio[ndi]'"
_PACKAGES = {"spout": ("SpoutGL", "SpoutGL", "pip install SpoutGL, and the obs-spout2 plugin in OBS"),
             "syphon": ("syphon", "syphon-python", "pip install syphon-python (OBS has a built-in Syphon Client)")}
TEXSHARE_MODULES = {kind: module for kind, (module, _, _) in _PACKAGES.items()}  # what each output imports


@dataclass(frozen=True)
class Availability:
    ok: bool | None  # None: cannot tell before trying (the output may be armed)
    detail: str  # what is there, or why it is not
    fix: str = ""  # how to get it, when it is not there

    def describe(self) -> str:
        """One line: the detail, and the fix when there is one."""
        return f"{self.detail}: {self.fix}" if self.fix else self.detail


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _installed(module: str) -> bool:
    """Importable, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec (a module set up by hand): imported already
        return sys.modules.get(module) is not None
    except ImportError:
        return False


def ndi_availability() -> Availability:
    """NDI: cyndilib installed and its bundled runtime loads (the import loads it)."""
    if not _installed("cyndilib"):
        return Availability(False, "NDI output needs cyndilib (its wheel brings the NDI runtime)", NDI_INSTALL)
    try:
        import cyndilib  # noqa: F401  (loads the NDI runtime library)
    except (ImportError, OSError) as e:
        return Availability(False, f"cyndilib is installed but the NDI runtime does not load ({e})",
                            "pip install --force-reinstall cyndilib")
    return Availability(True, f"NDI via cyndilib {_version('cyndilib')}")


def texshare_availability(kind: str, platform: str | None = None) -> Availability:
    """Spout or Syphon (`kind`) on `platform` (default ``sys.platform``)."""
    platform = platform or sys.platform
    label, (module, dist, fix) = LABELS[kind], _PACKAGES[kind]
    if platform != PLATFORMS[kind]:
        where = {"win32": "Windows", "darwin": "macOS"}[PLATFORMS[kind]]
        return Availability(False, f"{label} exists on {where} only", "use NDI or the OBS plugin here")
    if not _installed(module):
        return Availability(False, f"{label} output needs {dist}", fix)
    return Availability(True, f"{label} via {dist} {_version(dist)}")


def low_latency_outputs(platform: str | None = None) -> dict[str, Availability]:
    """Spout, Syphon and NDI on this machine (``platform``: default ``sys.platform``), in that order."""
    platform = platform or sys.platform
    return {"spout": texshare_availability("spout", platform), "syphon": texshare_availability("syphon", platform),
            "ndi": ndi_availability()}
