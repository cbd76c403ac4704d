#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds and runs a consumer against it using
# only pkg-config. Usage: pkgconfig_consumer.sh BUILD_DIR VERSION CONSUMER_SOURCE [EXTRA_CXXFLAGS...]
# PKG (default skein) names the package to build it with, e.g. skein_hooks; VERSION is the one
# installed, which pkg-config and <skein/version.hpp> must both report.
set -euo pipefail
build=$1 version=$2 src=$3
shift 3
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
if [ "$package" = skein ]; then
  gdb_extension=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$stage$prefix" --variable=gdb_extension skein)
  [ -f "$gdb_extension" ] || { echo "skein.pc's gdb_extension ($gdb_extension) is not installed" >&2; exit 1; }
fi
modversion=$(PKG_CONFIG_PATH="$pcdir" pkg-config --modversion "$package")
[ "$modversion" = "$version" ] || { echo "pkg-config says $package $modversion, installed $version" >&2; exit 1; }
# shellcheck disable=SC2086
c++ -std=c++20 "$@" -DSKEIN_EXPECTED_VERSION="\"$version\"" "$src" $flags -o "$stage/consumer"
"$stage/consumer"
