"""The installed names: one top-level import package, coexistence with wheels that ship `app`/`engine`, presets
found as package data in a `pip install --user` as in a venv.

These build the real wheel and install it with pip into throw-away environments (no network: `--no-index`,
`--no-deps`). The dependencies (torch, numpy, ...) come from this test's own environment through a `.pth` line, which
adds that site-packages folder without running its `.pth` files, so the checkout's editable install stays invisible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPS = sysconfig.get_paths()["purelib"]  # this environment's site-packages: torch, numpy, PySide6, ...

pytestmark = pytest.mark.slow


def run(*cmd, cwd, env=None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ROOT, "-w", out, cwd=out)
    # a stand-in for the real PyPI wheels that ship top-level `app` and `engine` packages
    other = tmp_path_factory.mktemp("other")
    for pkg in ("app", "engine"):
        (other / pkg).mkdir()
        (other / pkg / "__init__.py").write_text(f"WHO = 'other-{pkg}'\n")
    (other / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "other-app-engine"
        version = "1.0"
        [tool.setuptools]
        packages = ["app", "engine"]
        """))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", other, "-w", out, cwd=out)
    [ours] = out.glob("streamdiffusion_studio-*.whl")
    [theirs] = out.glob("other_app_engine-*.whl")
    return {"ours": ours, "theirs": theirs}


CHECK = textwrap.dedent("""\
    import sys
    import sdv2_studio.engine.cli, sdv2_studio.obs_bridge.cli
    from sdv2_studio.engine.presets import load_library, shipped_presets_dir
    presets, errors = load_library()
    assert not errors, errors
    builtin = [p for p in presets if p.builtin]
    assert len(builtin) >= 10, [p.id for p in presets]
    print("presets", len(builtin), shipped_presets_dir())
    print("engine", sdv2_studio.engine.cli.__file__)
    """)


def test_the_wheel_holds_one_top_level_package(wheels):
    names = zipfile.ZipFile(wheels["ours"]).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"sdv2_studio"}
    assert "sdv2_studio/presets/anime-cel.toml" in names and "sdv2_studio/presets/anime-cel.png" in names
    assert any(n.startswith("sdv2_studio/engine/") for n in names)
    assert not any(n.startswith(("sdv2_studio/bench", "sdv2_studio/tests")) for n in names)


def test_next_to_a_wheel_with_top_level_app_and_engine_both_work(wheels, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    Path(purelib, "zz_deps.pth").write_text(DEPS + "\n")
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheels["ours"], wheels["theirs"], cwd=tmp_path)
    out = run(py, "-c", CHECK + "import app, engine; assert app.WHO == 'other-app' and engine.WHO == 'other-engine'",
              cwd=tmp_path)
    assert purelib in out and "presets" in out
    run(venv / "bin" / "sdv2", "presets", "list", cwd=tmp_path)
    # uninstalling the other wheel deletes none of our files
    run(py, "-m", "pip", "uninstall", "-q", "-y", "other-app-engine", cwd=tmp_path)
    out = run(py, "-c", CHECK, cwd=tmp_path)
    assert "presets" in out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX user-site layout")
def test_pip_install_user_finds_the_shipped_presets(wheels, tmp_path):
    base = sys.base_prefix
    py = Path(base) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not py.exists():
        pytest.skip(f"no base interpreter at {py}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONNOUSERSITE", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONUSERBASE"] = str(tmp_path / "userbase")
    run(py, "-m", "pip", "install", "-q", "--user", "--no-deps", "--no-index", "--no-warn-script-location",
        wheels["ours"], cwd=tmp_path, env=env)
    user_site = run(py, "-c", "import site; print(site.getusersitepackages())", cwd=tmp_path, env=env).strip()
    assert Path(user_site, "sdv2_studio", "presets", "anime-cel.toml").is_file()
    # dependencies from this environment, after the user site (PYTHONPATH folders run no .pth files)
    out = run(py, "-c", f"import sys; sys.path.append({DEPS!r})\n" + CHECK, cwd=tmp_path, env=env)
    assert f"{user_site}/sdv2_studio/presets" in out
