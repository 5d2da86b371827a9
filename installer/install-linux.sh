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

HOME_DIR="${SDV2_HOME:-$HOME/.local/share/streamdiffusion-studio}"
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"  # ROOT, VENV, BIN and the steps below
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
flavour=""
for arg in "$@"; do
    case "$arg" in
        --cpu) flavour=cpu ;;
        --cuda) flavour=cuda ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $arg (use --cpu or --cuda)" >&2; exit 2 ;;
    esac
done

# 1. Python 3.10-3.13
find_python "sudo apt install python3 python3-venv (or set PYTHON=...)"

# 2. venv
make_venv "sudo apt install python3-venv"

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
install_app

# 5. launchers
link_commands
mkdir -p "$APPS"
make_icon "$HOME_DIR/icon.png" 256
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
finish "start 'StreamDiffusionV2 Studio' from the app menu, or run: $BIN/sdv2-studio"
