#!/usr/bin/env bash
# One version number: the newest entry of CHANGES.md is the project's version (meson.build), which
# <skein/version.hpp> is generated from. Usage: version_check.sh CHANGES.md VERSION_HPP VERSION
set -euo pipefail
changes=$1 header=$2 version=$3
newest=$(sed -n 's/^## \([0-9][0-9.]*\).*/\1/p' "$changes" | head -n1)
[ "$newest" = "$version" ] || { echo "CHANGES.md's newest entry is $newest, meson.build says $version" >&2; exit 1; }
grep -qx "#define SKEIN_VERSION_STRING \"$version\"" "$header" ||
  { echo "$header does not define SKEIN_VERSION_STRING \"$version\"" >&2; exit 1; }
echo "skein $version: CHANGES.md, meson.build and <skein/version.hpp> agree"
