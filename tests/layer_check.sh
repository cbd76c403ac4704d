#!/usr/bin/env bash
# The layers' include paths keep them apart: with a layer's own directories (layer_dirs in
# meson.build), a header of its layer or a lower one compiles and a higher layer's does not.
# Usage: layer_check.sh SOURCE_ROOT 'runtime=DIR:DIR...' 'net=...' 'asm=...' ['tls=...'] -- COMPILER...
# (tls only when skein is built with it: its headers need OpenSSL's.)
set -euo pipefail
root=$1
shift
declare -A dirs
while [ "$1" != -- ]; do
  dirs[${1%%=*}]=${1#*=}
  shift
done
shift
compiler=("$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
# check LAYER compiles|fails NAME CODE: CODE, compiled with LAYER's include directories.
check() {
  local layer=$1 want=$2 name=$3 flags=() dir
  printf '%s\n' "$4" >"$work/$name.cpp"
  IFS=: read -ra list <<<"${dirs[$layer]}"
  for dir in "${list[@]}"; do flags+=("-I$root/$dir"); done
  local out got=compiles
  out=$("${compiler[@]}" -std=c++20 -fsyntax-only "${flags[@]}" "$work/$name.cpp" 2>&1) || got=fails
  if [ "$got" = "$want" ]; then
    echo "ok   $layer: $name $got"
  else
    echo "FAIL $layer: $name $got, expected it to be $want"
    printf '%s\n' "$out" | head -n 5
    status=1
  fi
}
check runtime compiles runtime_header '#include <skein/task.hpp>'
check runtime compiles runtime_internal '#include "scheduler.hpp"'
check runtime fails net_header '#include <skein/socket.hpp>'
check runtime fails net_internal '#include "io_backend.hpp"'
check runtime fails umbrella_header '#include <skein/skein.hpp>'
check net compiles net_and_runtime $'#include <skein/socket.hpp>\n#include <skein/task.hpp>\n#include "io_backend.hpp"\n#include "scheduler.hpp"'
check asm compiles asm_header '#include "context.hpp"'
check asm fails runtime_header '#include <skein/task.hpp>'
check asm fails runtime_internal '#include "scheduler.hpp"'
check net fails tls_header '#include <skein/tls.hpp>'
if [ -n "${dirs[tls]:-}" ]; then
  check tls compiles tls_and_below $'#include <skein/tls.hpp>\n#include <skein/socket.hpp>\n#include <skein/task.hpp>\n#include "tls_impl.hpp"'
  check tls fails net_internal '#include "io_core.hpp"'
  check tls fails runtime_internal '#include "scheduler.hpp"'
fi
exit $status
