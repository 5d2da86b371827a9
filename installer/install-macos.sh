#!/usr/bin/env bash
# One-command install of StreamDiffusionV2 Studio on macOS (run from a checkout of the project):
#
#   bash installer/install-macos.sh
#
# macOS has no CUDA: torch is the standard PyPI build (CPU, with Apple's MPS backend). The real-time 1.3B model
# needs an NVIDIA GPU, so on a Mac the app runs the tiny demo model and is mainly useful to drive a remote or
# future GPU engine; the OBS, Syphon and virtual-camera integration work the same.
# What it does: finds Python 3.10-3.13, makes a venv in $SDV2_HOME (default ~/Library/Application Support/
# streamdiffusion-studio), installs torch and the app (GUI, OBS, downloads) and creates
# ~/Applications/StreamDiffusionV2 Studio.app plus ~/.local/bin/sdv2-studio.
# Environment: PYTHON (interpreter to use), SDV2_HOME.
set -euo pipefail

HOME_DIR="${SDV2_HOME:-$HOME/Library/Application Support/streamdiffusion-studio}"
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"  # ROOT, VENV, BIN and the steps below
APP="$HOME/Applications/StreamDiffusionV2 Studio.app"

find_python "install it from python.org or 'brew install python@3.12'"
make_venv "reinstall Python from python.org or 'brew reinstall python@3.12'"
say "installing torch (macOS build: CPU + MPS; no NVIDIA GPUs on macOS)"
"${PIP[@]}" install -q "torch>=2.4,<2.15"
install_app

# launchers: a small .app bundle that runs the venv's entry point, and a command-line link
mkdir -p "$APP/Contents/MacOS" "$APP/Contents/Resources"
cat > "$APP/Contents/MacOS/sdv2-studio" <<EOF
#!/bin/bash
exec "$VENV/bin/sdv2-studio" "\$@"
EOF
chmod +x "$APP/Contents/MacOS/sdv2-studio"
make_icon "$APP/Contents/Resources/icon.png" 512
if command -v sips >/dev/null 2>&1 && [ -f "$APP/Contents/Resources/icon.png" ]; then
    sips -s format icns "$APP/Contents/Resources/icon.png" --out "$APP/Contents/Resources/icon.icns" >/dev/null 2>&1 || true
fi
cat > "$APP/Contents/Info.plist" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>CFBundleName</key><string>StreamDiffusionV2 Studio</string>
    <key>CFBundleIdentifier</key><string>org.streamdiffusion.studio</string>
    <key>CFBundleExecutable</key><string>sdv2-studio</string>
    <key>CFBundleIconFile</key><string>icon.icns</string>
    <key>CFBundlePackageType</key><string>APPL</string>
    <key>NSCameraUsageDescription</key><string>StreamDiffusionV2 Studio styles your camera video live.</string>
    <key>NSHighResolutionCapable</key><true/>
</dict>
</plist>
EOF
link_commands
finish "open '$APP' (Finder > Applications in your home folder) or run $BIN/sdv2-studio"
