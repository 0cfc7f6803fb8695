#!/usr/bin/env bash
# Build dcp-desktop.app and a .dmg on macOS (Apple Silicon), with llama.cpp's Metal backend and
# PyTorch's MPS. UNTESTED: written on Linux, never run on a Mac (see README "Install the app").
#
#   packaging/macos/build_macos.sh
#
# Needs: Xcode command line tools (clang, codesign, iconutil, hdiutil), CMake, Python 3.11 arm64
# (python.org or Homebrew) with a shared libpython (both have one).
# Environment:
#   PYTHON             interpreter for the venv (default python3.11)
#   CODESIGN_IDENTITY  "Developer ID Application: NAME (TEAMID)": sign every binary and the app
#   NOTARY_PROFILE     a `xcrun notarytool store-credentials` profile: notarise and staple (needs the identity)
# Outputs (git-ignored): packaging/dist/dcp-desktop.app, packaging/dist/dcp-desktop-<v>-macos-arm64.dmg
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
BUILD="$ROOT/packaging/build"
DIST="$ROOT/packaging/dist"
VENV="$BUILD/venv-macos"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
APP="$DIST/dcp-desktop.app"
[ "$(uname -sm)" = "Darwin arm64" ] || { echo "build_macos.sh builds on an Apple Silicon Mac" >&2; exit 1; }
mkdir -p "$BUILD" "$DIST"

# 1. A clean venv. PyPI's macOS arm64 torch is the CPU + MPS build (no CUDA there to avoid).
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet -c packaging/constraints.txt)
CMAKE_ARGS="-DLLAMA_BUILD=OFF" "${PIP[@]}" torch llama-cpp-python pyinstaller==6.22.3 \
    "scikit-build-core>=0.10" "nanobind>=2.4"

# 2. Our wheel with Metal. GGML_METAL_EMBED_LIBRARY compiles the shader source into libggml-metal:
#    without it ggml looks for ggml-metal.metal / default.metallib beside the library at run time,
#    a file PyInstaller does not know about (the app then falls back to the CPU, or fails).
rm -rf "$BUILD/wheel-macos"
CMAKE_ARGS="-DGGML_METAL=ON -DGGML_METAL_EMBED_LIBRARY=ON" "$VENV/bin/pip" wheel --no-deps --no-build-isolation \
    -w "$BUILD/wheel-macos" --config-settings=build-dir="$BUILD/cmake-macos" .
WHEEL="$(ls "$BUILD"/wheel-macos/dcp_desktop-*.whl)"
"${PIP[@]}" --force-reinstall --no-deps "$WHEEL" && "${PIP[@]}" "$WHEEL"
"$VENV/bin/python" -c "
from dcp_desktop import llama_build as b
info = b.build_info()
assert 'METAL' in info['gpu_backends_built'], info
assert 'MTL' in ' '.join(info['backends']) or 'Metal' in ' '.join(info['backends']), info['backends']
import torch; assert torch.backends.mps.is_available(), 'no MPS'
print('llama.cpp backends:', info['backends'], '- torch', torch.__version__, 'with MPS')"

# 3. The icon, then the app (PyInstaller signs each binary it collects when CODESIGN_IDENTITY is set).
ICONSET="$BUILD/dcp-desktop.iconset"
rm -rf "$ICONSET" && mkdir -p "$ICONSET"
for size in 16 32 128 256 512; do
  sips -z $size $size packaging/icon/dcp-desktop-512.png --out "$ICONSET/icon_${size}x${size}.png" > /dev/null
  double=$((size * 2)); [ $double -le 512 ] || double=512
  sips -z $double $double packaging/icon/dcp-desktop-512.png --out "$ICONSET/icon_${size}x${size}@2x.png" > /dev/null
done
iconutil -c icns "$ICONSET" -o "$BUILD/dcp-desktop.icns"
rm -rf "$APP"
DCP_VERSION="$VERSION" "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --workpath "$BUILD/pyinstaller-macos" --distpath "$DIST" packaging/macos/dcp-desktop-macos.spec
rm -rf "$DIST/dcp-desktop"  # COLLECT's folder; the .app holds the same files

# 4. Signing and notarisation. Notarisation rejects the app if ANY Mach-O file inside is unsigned,
#    lacks the hardened runtime or a secure timestamp: check every one, not only the app.
if [ -n "${CODESIGN_IDENTITY:-}" ]; then
  ENT="packaging/macos/entitlements.plist"
  find "$APP/Contents" -type f -print0 | xargs -0 file | grep "Mach-O" | cut -d: -f1 | while read -r bin; do
    codesign --verify --strict "$bin" 2>/dev/null ||
      codesign --force --timestamp --options runtime --entitlements "$ENT" --sign "$CODESIGN_IDENTITY" "$bin"
  done
  codesign --force --timestamp --options runtime --entitlements "$ENT" --sign "$CODESIGN_IDENTITY" "$APP"
  codesign --verify --deep --strict --verbose=2 "$APP"
  if [ -n "${NOTARY_PROFILE:-}" ]; then
    ditto -c -k --keepParent "$APP" "$BUILD/dcp-desktop-notarise.zip"
    xcrun notarytool submit "$BUILD/dcp-desktop-notarise.zip" --keychain-profile "$NOTARY_PROFILE" --wait
    xcrun stapler staple "$APP"
    spctl --assess --type execute --verbose "$APP"
  fi
else
  echo "CODESIGN_IDENTITY unset: the app is unsigned (Gatekeeper will refuse it on other Macs)" >&2
fi

# 5. The disk image.
DMG="$DIST/dcp-desktop-$VERSION-macos-arm64.dmg"
rm -f "$DMG"
hdiutil create -volname dcp-desktop -srcfolder "$APP" -ov -format UDZO "$DMG"
[ -n "${CODESIGN_IDENTITY:-}" ] && codesign --timestamp --sign "$CODESIGN_IDENTITY" "$DMG"
du -sh "$APP" "$DMG"

# 6. A quick check of the built app (the Linux smoke test's first part, by hand here).
"$VENV/bin/python" -m dcp_desktop.scenes --split test --n 1 --out "$BUILD/scenes" > /dev/null
"$APP/Contents/MacOS/dcp-chat" "$BUILD/scenes/2000000000000000.png" "What colour is the hexagon?" --model demo
