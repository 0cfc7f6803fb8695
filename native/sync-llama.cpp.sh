#!/usr/bin/env bash
# Rebuild native/llama.cpp from the pinned llama-cpp-python sdist plus our patches.
#
#   native/sync-llama.cpp.sh llama_cpp_python-0.3.36.tar.gz
#
# The vendored tree is exactly: the sdist's vendor/llama.cpp (the commit its ctypes bindings were
# written against), trimmed to what we build, with native/llama.cpp-patches/*.patch applied in order.
# To move to a new llama-cpp-python: update PIN below, run this with the new sdist, fix the patches
# that no longer apply (edit the tree, regenerate the patch), rebuild, run tests/test_llama_build.py.
set -euo pipefail
shopt -s nullglob

# llama-cpp-python version, and the llama.cpp commit its sdist vendors (checked below).
PIN_VERSION=0.3.36
PIN_COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f

# What we build (see CMakeLists.txt): ggml core + the CPU, CUDA and Metal backends, libllama,
# tools/mtmd and the header-only libraries mtmd uses. Everything else (other backends, common/,
# tests, examples, the server, converters, docs, models) stays out.
KEEP=(
  CMakeLists.txt LICENSE AUTHORS cmake licenses include src
  vendor/CMakeLists.txt vendor/hash vendor/miniaudio vendor/nlohmann vendor/sheredom vendor/stb
  ggml/CMakeLists.txt ggml/cmake ggml/include
  ggml/src/CMakeLists.txt ggml/src/ggml-cpu ggml/src/ggml-cuda ggml/src/ggml-metal
  tools/mtmd
)
DROP=(
  ggml/src/ggml-cpu/spacemit
  tools/mtmd/tests tools/mtmd/tests.sh tools/mtmd/test-1.jpeg tools/mtmd/test-2.mp3 tools/mtmd/test-3.mp4
  tools/mtmd/legacy-models tools/mtmd/requirements.txt
)

sdist=${1:?usage: $0 llama_cpp_python-$PIN_VERSION.tar.gz}
native=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$native")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tar -xzf "$sdist" -C "$tmp"
top=$(echo "$tmp"/llama_cpp_python-*)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$top/llama_cpp/__init__.py")
commit=$(cat "$top/.git/modules/vendor/llama.cpp/HEAD")
if [[ "$version" != "$PIN_VERSION" || "$commit" != "$PIN_COMMIT" ]]; then
  echo "$sdist: llama-cpp-python $version vendors llama.cpp $commit;" \
       "expected $PIN_VERSION / $PIN_COMMIT (update PIN_* in $0 first)" >&2
  exit 1
fi

src="$top/vendor/llama.cpp"
dst="$native/llama.cpp"
rm -rf "$dst"
mkdir -p "$dst"
(cd "$src" && tar -cf - "${KEEP[@]}" ggml/src/*.* ) | (cd "$dst" && tar -xf -)
(cd "$dst" && rm -rf "${DROP[@]}")

for patch in "$native"/llama.cpp-patches/[0-9]*.patch; do
  echo "applying $(basename "$patch")"
  git -C "$repo" apply --directory=native/llama.cpp "$patch"
done
echo "native/llama.cpp: llama.cpp $PIN_COMMIT (llama-cpp-python $PIN_VERSION) + patches, $(du -sh "$dst" | cut -f1)"
