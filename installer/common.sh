# Shared by installer/install-linux.sh and installer/install-macos.sh (sourced, not run): messages, the Python
# check, the venv, the app's install, the command links and the closing check. The caller sets HOME_DIR (the
# install folder) first.

ROOT="$(cd "$(dirname "$0")/.." && pwd)"  # the checkout ($0 is the installer that sources this file)
VENV="$HOME_DIR/venv"
BIN="$HOME/.local/bin"

say() { printf '\033[1;35m[sdv2]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[sdv2] error:\033[0m %s\n' "$*" >&2; exit 1; }

# PY: $PYTHON or the first python3.1x on PATH that is 3.10-3.13 with venv; else stop with the hint in $1
find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.12 python3.11 python3.13 python3.10 python3; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
            PY="$cand"
            say "using $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
            return 0
        fi
    done
    die "Python 3.10-3.13 with venv is needed: $1"
}

# the venv in $VENV (made once, with the hint in $1 if that fails) and PIP, its up-to-date pip
make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        mkdir -p "$HOME_DIR"
        "$PY" -m venv "$VENV" || die "could not create a venv: $1"
    fi
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
    "${PIP[@]}" install -q --upgrade pip
}

install_app() {
    say "installing StreamDiffusionV2 Studio from $ROOT"
    "${PIP[@]}" install -q "$ROOT[gui,obs]"
}

# the app's icon as a PNG of $2 pixels at $1 (best effort: no icon is no reason to stop)
make_icon() {
    QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -m sdv2_studio.app.icon "$1" "$2" || true
}

link_commands() {
    mkdir -p "$BIN"
    ln -sf "$VENV/bin/sdv2-studio" "$BIN/sdv2-studio"
    ln -sf "$VENV/bin/sdv2" "$BIN/sdv2"
}

# what is left to do on this machine, then how to start the app ($1)
finish() {
    say "checking this machine (sdv2 doctor):"
    "$VENV/bin/sdv2" doctor || true
    say "done: $1"
}
