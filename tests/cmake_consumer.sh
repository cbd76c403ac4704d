#!/usr/bin/env bash
# Installs the build into a temporary prefix, then configures, builds and runs two consumers
# against it with CMake's find_package(skein CONFIG) only: one on skein::skein, one on skein::hooks.
# Usage: cmake_consumer.sh BUILD_DIR VERSION [EXTRA_CXXFLAGS...]
set -euo pipefail
build=$1 version=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage/root" meson install -C "$build" --no-rebuild --quiet >/dev/null
config=$(find "$stage/root" -name skeinConfig.cmake -print -quit)
[ -n "$config" ] || { echo "skeinConfig.cmake was not installed" >&2; exit 1; }
[ -f "$(dirname "$config")/skeinConfigVersion.cmake" ] || { echo "skeinConfigVersion.cmake missing" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here/cmake_consumer" -B "$stage/build" "${generator[@]}" -Dskein_DIR="$(dirname "$config")" \
  -DSKEIN_EXPECTED_VERSION="$version" -DSKEIN_CONSUMER_DIR="$here" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$*" >"$stage/configure.log" 2>&1 || { cat "$stage/configure.log"; exit 1; }
cmake --build "$stage/build" -j 2 >"$stage/build.log" 2>&1 || { cat "$stage/build.log"; exit 1; }
"$stage/build/consumer"
"$stage/build/hooks_consumer"
