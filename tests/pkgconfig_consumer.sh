#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds and runs a consumer against it using
# only pkg-config. Usage: pkgconfig_consumer.sh BUILD_DIR CONSUMER_SOURCE [EXTRA_CXXFLAGS...]
set -euo pipefail
build=$1 src=$2
shift 2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" meson install -C "$build" --no-rebuild --quiet >/dev/null
pc=$(find "$stage" -name skein.pc -print -quit)
[ -n "$pc" ] || { echo "skein.pc was not installed" >&2; exit 1; }
prefix=$(pkg-config --variable=prefix "$pc")
pcdir=$(dirname "$pc")
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$stage$prefix" --cflags --libs skein)
echo "pkg-config --cflags --libs skein: $flags"
# shellcheck disable=SC2086
c++ -std=c++20 "$@" "$src" $flags -o "$stage/consumer"
"$stage/consumer"
