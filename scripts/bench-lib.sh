# shellcheck shell=bash
# Helpers shared by scripts/bench, bench-net, bench-scale and bench-kv: sourced, never run. The
# sourcing script sets bench_name (its name in messages) first, and changes to the source root.

phase() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { echo "scripts/$bench_name: $*" >&2; }
die() { warn "$*"; exit 1; }
# Prints the script's header comment, lines 2 to $1, as its --help.
usage() { sed -n "2,$1p" "$0" | sed 's/^# \{0,1\}//'; }

# Other users' builds share these two cores. At nice -10 the servers and load generators outweigh
# ordinary (nice 0) tasks about ninefold, so the figures measure them, not the neighbours; every
# run gets the same treatment. Only root may raise priority. Sets prio (a command prefix).
prio=()
if [ "$(id -u)" -eq 0 ]; then prio=(nice -n -10); fi

# Configures (or reconfigures) a release tree in $1 and builds the targets after it. Benchmarks
# enabled, not auto: a missing baseline library must stop the job, not skip it. Every script uses
# this configuration, so they share the tree.
release_build() {  # BUILD_DIR TARGET...
  local dir=$1
  shift
  phase "configuring a release build in $dir"
  if [ -f "$dir/meson-private/coredata.dat" ]; then
    meson setup --reconfigure --buildtype=release -Dbenchmarks=enabled "$dir"
  else
    meson setup --buildtype=release -Dbenchmarks=enabled "$dir"
  fi
  phase "building $*"
  ninja -C "$dir" "$@"
}

# ---- servers, always stopped by pid ------------------------------------------------------------

# The servers started and not yet stopped; kill_live_servers (from the script's EXIT trap) ends them.
live_pids=()
kill_live_servers() {  # [SIGNAL]: sends it (default INT), then SIGKILL half a second later
  local pid
  for pid in "${live_pids[@]}"; do
    kill -"${1:-INT}" "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${live_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# Sends SIGNAL (default INT) to PID, waits up to 5 s, then SIGKILL; sets server_exit to its status
# (137 when killed) and forgets the pid.
stop_pid() {  # PID [SIGNAL] [NAME]
  local pid=$1 i
  kill -"${2:-INT}" "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "${3:-pid $pid} still running 5 s after SIG${2:-INT}; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  server_exit=0
  wait "$pid" 2>/dev/null || server_exit=$?
  local keep=() p
  for p in "${live_pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  live_pids=("${keep[@]}")
}

# Waits for a server of the samples' CLI contract to print 'listening on HOST:PORT' to LOG; sets
# server_port, or returns 1 if the server exits or 30 s pass (starting takes milliseconds, but a
# busy shared machine has stalled it for 10 s).
wait_listening() {  # PID LOG
  local i
  server_port=""
  for ((i = 0; i <= 300; i++)); do
    server_port=$(sed -n 's/^listening on [0-9.]*:\([0-9]*\)$/\1/p' "$2" 2>/dev/null | head -n1)
    [ -n "$server_port" ] && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# CPU time (user+system, clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
