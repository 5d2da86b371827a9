#!/usr/bin/env bash
# One-command install of StreamDiffusionV2 Studio on Linux (run from a checkout of the project):
#
#   bash installer/install-linux.sh              # detect NVIDIA -> CUDA torch, else CPU torch
#   bash installer/install-linux.sh --cpu        # force the CPU build (tiny demo model only)
#   bash installer/install-linux.sh --cuda       # force the CUDA build
#
# What it does: finds Python 3.10-3.13, makes a venv in $SDV2_HOME (default ~/.local/share/streamdiffusion-studio),
# installs torch (CUDA wheel index chosen from the driver's CUDA version, or CPU), installs the app with the GUI,
# OBS and download extras, and creates a launcher: ~/.local/bin/sdv2-studio and a desktop menu entry.
# Environment: PYTHON (interpreter to use), SDV2_HOME, SDV2_TORCH_INDEX (override the torch wheel index).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${SDV2_HOME:-$HOME/.local/share/streamdiffusion-studio}"
VENV="$HOME_DIR/venv"
BIN="$HOME/.local/bin"
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
flavour=""
for arg in "$@"; do
    case "$arg" in
        --cpu) flavour=cpu ;;
        --cuda) flavour=cuda ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $arg (use --cpu or --cuda)" >&2; exit 2 ;;
    esac
done

say() { printf '\033[1;35m[sdv2]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[sdv2] error:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. Python 3.10-3.13
find_python() {
    for cand in "${PYTHON:-}" python3.12 python3.11 python3.13 python3.10 python3; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
            echo "$cand"; return 0
        fi
    done
    return 1
}
PY="$(find_python)" || die "Python 3.10-3.13 with venv is needed: sudo apt install python3 python3-venv (or set PYTHON=...)"
say "using $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 2. venv
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    mkdir -p "$HOME_DIR"
    "$PY" -m venv "$VENV" || die "could not create a venv: sudo apt install python3-venv"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# 3. torch: CUDA wheel where an NVIDIA GPU exists, CPU otherwise
if [ -z "$flavour" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
if [ "$flavour" = cuda ]; then
    index="${SDV2_TORCH_INDEX:-}"
    if [ -z "$index" ]; then
        # the driver's highest supported CUDA version, e.g. "CUDA Version: 12.8"
        drv="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1\2/p' | head -n1)"
        if [ -n "$drv" ] && [ "$drv" -ge 128 ]; then index=https://download.pytorch.org/whl/cu128
        elif [ -n "$drv" ] && [ "$drv" -ge 126 ]; then index=https://download.pytorch.org/whl/cu126
        else
            die "the NVIDIA driver is too old for current torch builds (needs CUDA 12.6+): update the driver, or run with --cpu"
        fi
    fi
    nvidia-smi -L | sed 's/^/[sdv2]   /'
    say "installing torch (CUDA) from $index"
    "${PIP[@]}" install -q "torch>=2.4,<2.15" --index-url "$index"
else
    say "no NVIDIA GPU found: installing the CPU build of torch (the tiny demo model runs; the real model needs a GPU)"
    "${PIP[@]}" install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
fi

# 4. the app
say "installing StreamDiffusionV2 Studio from $ROOT"
"${PIP[@]}" install -q "$ROOT[gui,obs]"

# 5. launchers
mkdir -p "$BIN" "$APPS"
ln -sf "$VENV/bin/sdv2-studio" "$BIN/sdv2-studio"
ln -sf "$VENV/bin/sdv2" "$BIN/sdv2"
QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -m app.icon "$HOME_DIR/icon.png" 256 || true
cat > "$APPS/sdv2-studio.desktop" <<EOF
[Desktop Entry]
Type=Application
Name=StreamDiffusionV2 Studio
Comment=Live AI video styles for your camera and OBS
Exec=$VENV/bin/sdv2-studio
Icon=$HOME_DIR/icon.png
Terminal=false
Categories=AudioVideo;Video;
EOF
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$APPS" >/dev/null 2>&1 || true
case ":$PATH:" in *":$BIN:"*) ;; *) say "add $BIN to your PATH to run sdv2-studio from a terminal" ;; esac

# 6. what is left to do
say "checking this machine (sdv2 doctor):"
"$VENV/bin/python" -m engine.doctor || true
say "done: start 'StreamDiffusionV2 Studio' from the app menu, or run: $BIN/sdv2-studio"
