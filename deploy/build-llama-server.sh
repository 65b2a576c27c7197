#!/usr/bin/env bash
# Build llama.cpp's llama-server (the CPU engine of the llamacpp backend) and llama-batched-bench
# from the llama.cpp sources vendored in the llama-cpp-python source package on PyPI, and install
# them next to the virtualenv's Python, where runtime/backends/llamacpp.py looks first.
#
#   deploy/build-llama-server.sh VENV_BIN      e.g. .venv/bin
#
# Why from source: no prebuilt binary can be downloaded where this project is developed and tested,
# and PyPI carries llama.cpp only as llama-cpp-python's sdist (its Python API runs one sequence at a
# time, so the server, with continuous batching and a prompt cache, is what we build). GGML_NATIVE
# tunes it to this CPU (AVX2 / AVX-512 / AVX512-BF16 as present). Also copies the conversion scripts
# (convert_hf_to_gguf.py, convert_lora_to_gguf.py) and their gguf-py next to the binaries, for the
# conversion of fine-tuned models. About 4 minutes on 2 idle cores; a no-op when already built.
# A build is also kept in ~/.cache/mathcoder/llama.cpp, keyed by the version and this CPU's flags
# (a native build runs only where it was built): a fresh clone on the same machine copies it in
# seconds instead of compiling again.
#
# Without AMX: on Sapphire Rapids-class CPUs (AMX_INT8) a native build repacks the weights for
# ggml's AMX kernels, and ggml_backend_amx_mul_mat segfaults on the first decode (seen here with
# the Q4_1 default model; llama.cpp issue #20824, unfixed). AVX-512/VNNI/BF16 stay on; GCC lets an
# explicit -mno-amx-* win over the -march=native that GGML_NATIVE adds.
set -euo pipefail
bin=${1:?usage: build-llama-server.sh VENV_BIN}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
recipe=2  # bump when the cmake options below change: a cached build of another recipe is not reused
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
stamp="$bin/.llama-server-$version-r$recipe"
cpu=$( { grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; echo "recipe $recipe"; } | sha256sum | cut -c1-12)
[ -x "$bin/llama-server" ] && [ -f "$stamp" ] && { touch "$bin/llama-server"; exit 0; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mathcoder/llama.cpp/$version-$(uname -m)-$cpu"
share="$bin/../share/llama.cpp"
install_from() {  # a finished build folder (bin/, share/) -> the virtualenv
  install -m 0755 "$1/bin/llama-server" "$1/bin/llama-batched-bench" "$bin/"
  rm -rf "$share" && mkdir -p "$share" && cp -r "$1/share/." "$share/"
  touch "$stamp"
}
if [ -x "$cache/bin/llama-server" ] && [ -f "$cache/complete" ]; then
  install_from "$cache"
  echo "installed llama-server $version from $cache"
  exit 0
fi
if ! { command -v cmake >/dev/null && command -v c++ >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null
  else
    echo "build-llama-server: cmake and a C++ compiler are needed (apt-get install cmake g++)" >&2; exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/python" -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$work" "llama-cpp-python==$version"
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$src/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$src/build" --target llama-server llama-batched-bench -j "$(nproc)" >/dev/null
out="$work/out"
mkdir -p "$out/bin" "$out/share"
cp "$src/build/bin/llama-server" "$src/build/bin/llama-batched-bench" "$out/bin/"
cp -r "$src/convert_hf_to_gguf.py" "$src/convert_lora_to_gguf.py" "$src/gguf-py" "$out/share/"
[ -d "$src/conversion" ] && cp -r "$src/conversion" "$out/share/"
install_from "$out"
# Into the cache under a temporary name, then renamed: a build cut short is never taken for one.
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.partial" && cp -r "$out" "$cache.partial" && touch "$cache.partial/complete"
rm -rf "$cache" && mv "$cache.partial" "$cache"
echo "built llama-server $version into $bin (kept in $cache)"
