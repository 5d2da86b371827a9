"""Build and install the native OBS plugin (``obs_bridge/plugin/``) into OBS's per-user plugin folder.

    path = install_plugin()        # Linux: cmake + libobs-dev -> ~/.config/obs-studio/plugins/streamdiffusionv2/
    plugin_status()                # is it installed? (Availability: ok, detail, fix)
    attach_plugin_source(client, "Live", "main")   # the plugin's source, showing channel "main", in a scene

The plugin registers the ``streamdiffusionv2_source`` input and the ``streamdiffusionv2_filter`` filter; they exchange
frames with the engine through shared memory (``plugin/PROTOCOL.md``; the engine side is ``engine.io.shm``). macOS
and Windows builds use the CMake presets in ``plugin/CMakePresets.json`` (``plugin/README.md``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import Availability

PLUGIN = "streamdiffusionv2"
SOURCE_KIND, FILTER_KIND = "streamdiffusionv2_source", "streamdiffusionv2_filter"
INSTALL_HINT = "run `sdv2 obs install-plugin`, then restart OBS"
APT = "sudo apt install cmake build-essential pkg-config libobs-dev"
LIBOBS_HEADER = Path("/usr/include/obs/obs-module.h")  # where libobs-dev puts it


def plugin_source() -> Path:
    """The plugin's source folder (CMakeLists.txt, src/, data/)."""
    return Path(__file__).resolve().with_name("plugin")


def user_plugin_dir() -> Path:
    """OBS's per-user plugin folder on Linux (``$XDG_CONFIG_HOME/obs-studio/plugins``, default ``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "obs-studio" / "plugins"


def installed_module(prefix: Path) -> Path:
    """Where OBS loads the module from under plugin folder ``prefix``."""
    return prefix / PLUGIN / "bin" / "64bit" / f"{PLUGIN}.so"


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return m.group(0) if m else None


def check_tools() -> str:
    """The cmake executable; EngineError naming the apt packages when cmake, a compiler or libobs-dev is missing."""
    if not sys.platform.startswith("linux"):
        raise EngineError("`sdv2 obs install-plugin` builds on Linux; on macOS and Windows build with the CMake "
                          f"presets as {plugin_source() / 'README.md'} describes")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EngineError(f"cmake is not installed: {APT}")
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        raise EngineError(f"no C compiler found: {APT}")
    if not (LIBOBS_HEADER.exists() or _version(["pkg-config", "--modversion", "libobs"])):
        raise EngineError(f"OBS's development files (libobs-dev) are not installed: {APT}")
    return cmake


def install_plugin(prefix: Path | None = None, *, build_dir: Path | None = None,
                   log: Callable[[str], None] = lambda line: None) -> Path:
    """Configure, build and install the plugin under ``prefix`` (default: :func:`user_plugin_dir`); returns the
    installed module. The build happens in ``build_dir`` (default: a temporary folder, kept with its log on failure).
    A libobs whose major version differs from the installed OBS's is reported through ``log`` (OBS may refuse it)."""
    cmake = check_tools()
    prefix = Path(prefix or user_plugin_dir()).expanduser()
    lib, obs = _version(["pkg-config", "--modversion", "libobs"]), _version(["obs", "--version"])
    if lib and obs and lib.split(".")[0] != obs.split(".")[0]:
        log(f"warning: libobs-dev is {lib} but OBS is {obs}; install matching versions if OBS does not load the plugin")
    temporary = build_dir is None
    build = Path(build_dir or tempfile.mkdtemp(prefix="sdv2-obs-plugin-"))
    build.mkdir(parents=True, exist_ok=True)
    log_path = build / "build.log"
    steps = [
        ("configure", [cmake, "-S", str(plugin_source()), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]),
        ("build", [cmake, "--build", str(build), "--parallel"]),
        ("install", [cmake, "--install", str(build), "--prefix", str(prefix)]),
    ]
    with open(log_path, "w", encoding="utf-8") as out:
        for name, cmd in steps:
            log(f"{name}: {' '.join(cmd)}")
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
            if done.returncode != 0:
                break
    if done.returncode != 0:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if "libobs not found" in text:
            raise EngineError(f"OBS's development files (libobs-dev) were not found by cmake: {APT}")
        lines = [ln for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines() or ["no output"]
        raise EngineError(f"the plugin did not {name} ({lines[0].strip()}); full log: {log_path}")
    if temporary:
        shutil.rmtree(build, ignore_errors=True)
    module = installed_module(prefix)
    if not module.is_file():
        raise EngineError(f"the build finished but {module} is missing; report this with the log of a --build-dir run")
    return module


def plugin_status(prefix: Path | None = None) -> Availability:
    """Whether the plugin is installed for OBS under ``prefix`` (default :func:`user_plugin_dir`; Linux), and if not,
    how to install it. Elsewhere the build is by hand, so it cannot tell (``ok`` None)."""
    if not sys.platform.startswith("linux"):
        return Availability(None, "the OBS plugin is built by hand on this system",
                            f"see {plugin_source() / 'README.md'}")
    module = installed_module(Path(prefix or user_plugin_dir()).expanduser())
    if module.is_file():
        return Availability(True, f"the StreamDiffusionV2 OBS plugin is installed ({module})")
    return Availability(False, "the StreamDiffusionV2 OBS plugin is not installed", INSTALL_HINT)


def attach_plugin_source(client, scene: str, channel: str, name: str | None = None):
    """Show the plugin's source (kind ``streamdiffusionv2_source``) reading ``channel`` as input ``name`` (default
    the styled source's name) in ``scene``, created or updated like the media source (obs_bridge.output.ensure_input:
    a same-named input of another kind is replaced). ObsCapabilityError when this OBS has not loaded the plugin."""
    from sdv2_studio.engine.io.shm import check_channel
    from sdv2_studio.obs_bridge.output import INPUT_NAME, ensure_input

    kind = client.connect().require_kind(f"StreamDiffusionV2 plugin source ({INSTALL_HINT})", SOURCE_KIND)
    return ensure_input(client, scene, name or INPUT_NAME, kind, {"channel": check_channel(channel)})
