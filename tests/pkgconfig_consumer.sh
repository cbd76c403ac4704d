#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds and runs a consumer against it using
# only pkg-config. Usage: pkgconfig_consumer.sh BUILD_DIR CONSUMER_SOURCE [EXTRA_CXXFLAGS...]
# PKG (default skein) names the package to build it with, e.g. skein_hooks.
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
package=${PKG:-skein}
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$stage$prefix" --cflags --libs "$package")
echo "pkg-config --cflags --libs $package: $flags"
# shellcheck disable=SC2086
c++ -std=c++20 "$@" "$src" $flags -o "$stage/consumer"
"$stage/consumer"
