"""Build the PyInstaller bundle (installer/studio.spec) and smoke-start it with --screenshot.

Slow: about 3 minutes of build on 2 CPU cores (measured: 2 min 51 s, 1.1 GB one-folder bundle with the
CPU torch), so it runs in CI (installer/setup.sh test sets SDV2_TEST_BUNDLE=1 when CI is set) and on request:

    SDV2_TEST_BUNDLE=1 pytest tests/test_app_bundle.py -m slow      (needs: pip install pyinstaller)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3000),  # the build alone took 10-25 min on a loaded 2-core runner (the suite's default: 600 s)
    pytest.mark.skipif(not os.environ.get("SDV2_TEST_BUNDLE"), reason="opt-in: set SDV2_TEST_BUNDLE=1 (~3 min)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bundle test runs on Linux"),
]


def test_pyinstaller_bundle_builds_and_starts(tmp_path):
    pytest.importorskip("PyInstaller")
    t0 = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "PyInstaller", str(ROOT / "installer" / "studio.spec"),
                            "--noconfirm", "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "build")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    built = time.monotonic() - t0
    assert build.returncode == 0, build.stderr[-3000:]
    exe = tmp_path / "dist" / "StreamDiffusionV2Studio" / "sdv2-studio"
    assert exe.is_file()
    assert (exe.parent / "_internal" / "sdv2_studio" / "presets" / "anime-cel.toml").is_file()  # package data
    shot = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    t1 = time.monotonic()
    run = subprocess.run([str(exe), "--screenshot", str(shot), "--seconds", "2"], env=env, capture_output=True,
                         text=True, timeout=300)
    print(f"\nPyInstaller build {built:.0f} s, smoke start + 2 s stream {time.monotonic() - t1:.0f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    assert shot.stat().st_size > 50_000
