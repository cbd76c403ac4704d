#!/bin/sh
# The gdb extension (runtime/gdb/skein-gdb.py) on a live process, then on the core file gdb wrote
# of it: `skein fibers` names every fiber's wait, `skein bt` shows each parked fiber's stack down
# to the function it parked in, the errors name what is wrong.
#
#   gdb_test.sh GDB_TARGET SKEIN_GDB_PY [B_SANITIZE] [CONTEXT]
#
# In a cross build (meson test sets MESON_EXE_WRAPPER, e.g. `qemu-aarch64 -L SYSROOT`) the target
# runs under the wrapper's gdb stub (`-g PORT`) and gdb-multiarch connects to it: the live session
# only, as gdb cannot place a position-independent program in qemu-user's core files (they carry
# no auxiliary vector).
#
# Exits 77 (skipped) where gdb or its Python is missing.
set -u
target=$1
script=$2
sanitize=${3:-none}
context=${4:-asm}

# shellcheck disable=SC2086
set -- ${MESON_EXE_WRAPPER:-}
wrapper="$*"
gdb=gdb
sysroot=
if [ -n "$wrapper" ]; then
  gdb=gdb-multiarch
  while [ $# -gt 0 ]; do
    [ "$1" = -L ] && [ $# -gt 1 ] && sysroot=$2
    shift
  done
fi

if ! command -v "$gdb" >/dev/null 2>&1; then
  echo "$gdb is not installed: skipped"
  exit 77
fi
if ! "$gdb" -nx -batch -ex 'python import gdb.unwinder' >/dev/null 2>&1; then
  echo "this $gdb has no Python (or no gdb.unwinder): skipped"
  exit 77
fi

tmp=$(mktemp -d)
stub_pid=
trap '[ -n "$stub_pid" ] && kill "$stub_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAILED: $*"
  failures=$((failures + 1))
}

# The lines of fiber "NAME"'s section of a `skein bt all` output: from its title to the next one.
section() {
  awk -v name="\"$2\"" '/^fiber #/ { on = index($0, name) > 0 } on' "$1"
}

# expect FILE TEXT WHAT: FILE contains TEXT.
expect() {
  grep -qF -- "$2" "$1" || fail "$3: no \"$2\" in $1"
}

# The same checks on both sessions' output.
check() {
  out=$1
  what=$2
  expect "$out" '7 fibers in 1 runtime(s), 2 worker(s): 1 ready, 1 running, 5 parked' "$what: skein fibers header"
  for pair in 'receiver:channel recv on 0x' 'sleeper:sleep, deadline in' 'locker:mutex on 0x' \
      'consumer:channel recv on 0x' 'waiter:event on 0x' 'main:on thread 1' 'ready:ready'; do
    name=${pair%%:*}
    wait=${pair#*:}
    grep -F "\"$name\"" "$out" | grep -F -- "$wait" | grep -qF 'gdb_target.cpp' ||
      fail "$what: skein fibers shows no line for \"$name\" with \"$wait\" and its spawn site"
  done
  for pair in receiver:skein_gdb_parked_in_recv sleeper:skein_gdb_parked_in_sleep \
      locker:skein_gdb_parked_on_mutex waiter:skein_gdb_parked_on_event \
      consumer:skein_gdb_parked_in_generator consumer:skein_gdb_consumer_of_generator \
      'consumer:resumed the coroutine above' 'ready:not started yet' 'main:thread 1'; do
    name=${pair%%:*}
    want=${pair#*:}
    section "$out" "$name" | grep -qF -- "$want" ||
      fail "$what: skein bt all shows no \"$want\" for fiber \"$name\""
  done
  # Each parked stack goes down to the fiber's entry.
  for name in receiver sleeper locker waiter consumer; do
    section "$out" "$name" | grep -qF 'Scheduler::fiber_entry' ||
      fail "$what: the backtrace of \"$name\" does not reach Scheduler::fiber_entry"
  done
  expect "$out" 'skein: fiber #1 is running: its stack is thread 1' "$what: skein bt of the running fiber"
  expect "$out" 'skein: no fiber #999 among the 7 live fibers' "$what: skein bt of an unknown id"
  # skein fiber: the fiber's frames in place of the thread's, then back.
  awk '/^-- fiber locker --$/ { on = 1; next } /^-- fiber off --$/ { on = 0 } on' "$out" > "$tmp/fiber.txt"
  awk '/^-- fiber off --$/ { on = 1; next } on' "$out" > "$tmp/off.txt"
  expect "$tmp/fiber.txt" 'skein_gdb_parked_on_mutex' "$what: bt after skein fiber locker"
  expect "$tmp/fiber.txt" 'locked_ = true' "$what: info args (the locked mutex) in a frame of skein fiber locker"
  grep -qF 'skein_gdb_parked_on_mutex' "$tmp/off.txt" && fail "$what: bt after skein fiber off still shows the fiber"
  expect "$tmp/off.txt" 'skein_gdb_target_stop' "$what: bt after skein fiber off"
}

# The commands of both sessions.
commands() {
  cat <<EOF
set pagination off
set confirm off
set width 0
source $script
skein fibers
skein bt all -frame-arguments none
python
# A failing command would end the script: these two are expected to fail.
for command in ("skein bt 1", "skein bt 999"):
    try:
        gdb.execute(command)
    except gdb.error as e:
        print(e)
end
echo -- fiber locker --\n
skein fiber locker
bt -frame-arguments none
frame function skein_gdb_parked_on_mutex
info args
echo -- fiber off --\n
skein fiber off
bt -frame-arguments none
EOF
}

# Under a wrapper: the target waits in the wrapper's gdb stub on a free loopback port.
if [ -n "$wrapper" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086
  $wrapper -g "$port" "$target" > "$tmp/stub.txt" 2>&1 &
  stub_pid=$!
  sleep 1
fi

# Live: stop at the target's breakpoint, look, write a core file.
{
  echo 'set pagination off'
  [ -n "$sysroot" ] && echo "set sysroot $sysroot"
  echo "source $script"
  # Before the process exists, then before its first runtime.
  cat <<'EOF'
python
try:
    gdb.execute("skein fibers")
except gdb.error as e:
    print(e)
end
EOF
  if [ -n "$wrapper" ]; then
    echo "target remote 127.0.0.1:$port"
    echo 'break main'
    echo 'continue'
  else
    echo 'break main'
    echo 'run'
  fi
  cat <<'EOF'
python
try:
    gdb.execute("skein fibers")
except gdb.error as e:
    print(e)
end
EOF
  echo 'break skein_gdb_target_stop'
  echo 'continue'
  commands
  # gcore stops copying a mapping at its first unreadable page; the sanitizers' shadow memory
  # would also make it huge. Only plain builds write one.
  [ "$sanitize" = none ] && [ -z "$wrapper" ] && echo "generate-core-file $tmp/core"
  echo 'kill'
} > "$tmp/live.gdb"
start=$(date +%s)
"$gdb" -nx -batch -x "$tmp/live.gdb" --args "$target" > "$tmp/live.txt" 2>&1 </dev/null
echo "live session (context $context, sanitizer $sanitize${wrapper:+, under $wrapper}):"
cat "$tmp/live.txt"
check "$tmp/live.txt" live
expect "$tmp/live.txt" 'skein: no process or core file to look at' "live: skein fibers before run"
expect "$tmp/live.txt" 'skein: no skein runtime has been created in this process yet' "live: skein fibers at main"

if [ -n "$wrapper" ]; then
  echo "core file session: left out under $wrapper"
elif [ "$sanitize" = none ]; then
  if [ -s "$tmp/core" ]; then
    commands > "$tmp/core.gdb"
    "$gdb" -nx -batch -x "$tmp/core.gdb" "$target" "$tmp/core" > "$tmp/core.txt" 2>&1 </dev/null
    echo "core file session:"
    cat "$tmp/core.txt"
    check "$tmp/core.txt" core
    expect "$tmp/core.txt" '(not a live local process: waiting times are' "core: skein fibers says its times are lower bounds"
  else
    fail "gdb wrote no core file"
  fi
fi
echo "took $(($(date +%s) - start)) s"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
