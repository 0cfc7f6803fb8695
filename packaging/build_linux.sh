#!/usr/bin/env bash
# Build the Linux app: a PyInstaller one-folder bundle, a .deb and a .tar.gz, from a clean venv.
#
#   packaging/build_linux.sh            everything: venv, wheel, bundle, trim, .deb, .tar.gz
#
# Outputs (git-ignored):
#   packaging/build/venv/                 the clean venv (CPU torch, our wheel, PyInstaller); reused
#   packaging/build/cmake/                our wheel's CMake tree (llama.cpp + _native); incremental
#   packaging/dist/dcp-desktop/           the bundle: dcp-desktop, dcp-chat (a link), _internal/
#   packaging/dist/dcp-desktop_<v>_<arch>.deb, dcp-desktop-<v>-linux-<arch>.tar.gz
#
# Environment:
#   PYTHON       the interpreter the venv is made from (default python3; needs a shared libpython)
#   TORCH_INDEX  where the CPU build of torch comes from (default PyTorch's CPU index); empty: only
#                the indexes pip is configured with. torch is asked for as ==X+cpu, so pip fails
#                rather than fall back to a CUDA build (several GB).
#   NICE         niceness of the compile and PyInstaller steps (default 10)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
NICE="${NICE:-10}"
PYINSTALLER_VERSION=6.22.3
BUILD="$ROOT/packaging/build"
DIST="$ROOT/packaging/dist"
VENV="$BUILD/venv"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
ARCH="$(dpkg --print-architecture 2>/dev/null || uname -m)"
TORCH_VERSION="$(sed -n 's/^torch==//p' packaging/constraints.txt)"
run() { nice -n "$NICE" "$@"; }
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
mkdir -p "$BUILD" "$DIST"

step "clean venv: $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --quiet -c packaging/constraints.txt)
torch_from=()
[ -n "$TORCH_INDEX" ] && torch_from=(--extra-index-url "$TORCH_INDEX")
"${PIP[@]}" "${torch_from[@]}" "torch==${TORCH_VERSION}+cpu"
# llama-cpp-python: its Python bindings only; our wheel brings the llama.cpp they load.
CMAKE_ARGS="-DLLAMA_BUILD=OFF" run "${PIP[@]}" "pyinstaller==$PYINSTALLER_VERSION" llama-cpp-python \
    "scikit-build-core>=0.10" "nanobind>=2.4"  # the last two build our wheel (not bundled)

step "our wheel (llama.cpp + the pruning module), CMake tree $BUILD/cmake"
rm -rf "$BUILD/wheel"
run "$VENV/bin/pip" wheel --quiet --no-deps --no-build-isolation -w "$BUILD/wheel" \
    --config-settings=build-dir="$BUILD/cmake" .
WHEEL="$(ls "$BUILD"/wheel/dcp_desktop-*.whl)"
"${PIP[@]}" --force-reinstall --no-deps "$WHEEL"
"${PIP[@]}" "$WHEEL"  # its dependencies, at the constrained versions
"$VENV/bin/python" - <<'EOF'
import torch
assert "+cpu" in torch.__version__, f"the bundle must carry the CPU torch, found {torch.__version__}"
EOF

step "PyInstaller bundle"
rm -rf "$DIST/dcp-desktop"
run "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --workpath "$BUILD/pyinstaller" --distpath "$DIST" packaging/dcp-desktop.spec
ln -sfn dcp-desktop "$DIST/dcp-desktop/dcp-chat"  # one program; it reads its name (launcher.py)
du -sm "$DIST/dcp-desktop" | awk '{print "bundle: " $1 " MB"}'

step "packages"
"$ROOT/packaging/make_deb.sh" "$DIST/dcp-desktop" "$VERSION" "$ARCH" "$DIST/dcp-desktop_${VERSION}_${ARCH}.deb"
tar -C "$DIST" -czf "$DIST/dcp-desktop-${VERSION}-linux-$(uname -m).tar.gz" dcp-desktop
ls -l "$DIST"/*.deb "$DIST"/*.tar.gz
