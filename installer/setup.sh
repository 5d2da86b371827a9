#!/usr/bin/env bash
# One-command setup for developers and CI (Linux/macOS shells).
#
#   bash installer/setup.sh demo   # make .venv, install, run the built-in tiny model on the test source
#   bash installer/setup.sh test   # make .venv with the test tools, run ruff, import-linter and pytest
#   bash installer/setup.sh app    # make .venv, install with the OBS extras, start the desktop app (sdv2-studio)
#
# End-user installers (venv in the user's data folder, launcher/shortcuts): installer/install-linux.sh,
# installer/install-macos.sh, installer/install-windows.ps1. App bundle: pyinstaller installer/studio.spec.
#
# torch: an existing torch in .venv is kept. Otherwise SDV2_TORCH picks the build:
#   SDV2_TORCH=cpu  (default without an NVIDIA GPU) installs torch==2.13.0, the CPU wheel CI uses;
#   SDV2_TORCH=cuda (default when nvidia-smi works) installs torch from SDV2_TORCH_INDEX
#                   (default https://download.pytorch.org/whl/cu128).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${SDV2_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
what="${1:-demo}"
shift || true

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    flavour="${SDV2_TORCH:-}"
    if [ -z "$flavour" ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
    fi
    if [ "$flavour" = cuda ]; then
        log "installing torch (CUDA build)"
        "${PIP[@]}" install -q "torch>=2.4,<2.15" --index-url "${SDV2_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
    else
        log "installing torch 2.13.0 (CPU)"
        "${PIP[@]}" install -q "torch==2.13.0"
    fi
fi

case "$what" in
    demo)
        log "installing streamdiffusion-studio"
        "${PIP[@]}" install -q -e "$ROOT"
        log "running the built-in tiny demo (untrained test model, test source) -> out/styled.mp4"
        exec "$VENV/bin/sdv2" run --out out/styled.mp4 "$@"
        ;;
    test)
        # the live OBS tests: OBS and Xvfb, and what builds the native plugin (tests/test_obs_plugin.py)
        if ! command -v obs >/dev/null 2>&1 || ! command -v Xvfb >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1 ||
           ! command -v cc >/dev/null 2>&1 || [ ! -f /usr/include/obs/obs-module.h ]; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                log "installing obs-studio, xvfb and the plugin build tools for the live OBS tests"
                { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends obs-studio xvfb \
                      libobs-dev cmake build-essential pkg-config; } ||
                    log "could not install them: the live OBS tests will be skipped (no obs, no build tools) or fail (no Xvfb)"
            else
                log "obs-studio/xvfb/libobs-dev/cmake missing and not root with apt-get: the live OBS tests will be skipped"
            fi
        fi
        log "installing streamdiffusion-studio with test tools (and the NDI extra where cyndilib has a wheel)"
        "${PIP[@]}" install -q --only-binary cyndilib -e "$ROOT[test,obs,ndi]" || {
            log "cyndilib has no wheel here: the NDI round-trip tests will be skipped"
            "${PIP[@]}" install -q -e "$ROOT[test,obs]"; }
        log "ruff"
        "$VENV/bin/ruff" check .
        log "import-linter"
        (cd "$ROOT" && "$VENV/bin/lint-imports")
        log "pytest"
        export QT_QPA_PLATFORM=offscreen
        if [ -n "${CI:-}" ]; then
            export SDV2_TEST_BUNDLE=1  # CI also builds the PyInstaller bundle and smoke-starts it (~3 min)
        fi
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    app)
        log "installing streamdiffusion-studio with the OBS extras"
        "${PIP[@]}" install -q -e "$ROOT[obs]"
        log "starting the desktop app"
        exec "$VENV/bin/sdv2-studio" "$@"
        ;;
    *)
        echo "usage: bash installer/setup.sh demo|test|app [args...]" >&2
        exit 2
        ;;
esac
