#!/usr/bin/env bash
# Every command under scripts/ answers --help with its usage and exit status 0, without installing
# or building anything. A script is run only once it is seen to handle --help: one that does not
# would start its real work (a full build, an apt-get) instead.
# Usage: scripts_help.sh SCRIPTS_DIR
set -uo pipefail
dir=$1
bad=0
for s in "$dir"/*; do
  case "$s" in *.sh) continue ;; esac   # sourced libraries, not commands
  name=${s##*/}
  if ! grep -q -- '--help)' "$s"; then
    echo "scripts/$name: no --help" >&2
    bad=1
    continue
  fi
  out=$(timeout 10 bash "$s" --help </dev/null 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then
    echo "scripts/$name --help: exit status $rc, output: $out" >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] && echo "every command under scripts/ answers --help"
exit "$bad"
