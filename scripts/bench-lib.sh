# shellcheck shell=bash
# Helpers shared by scripts/bench, bench-net, bench-tls, bench-scale, bench-kv and bench-churn:
# sourced, never run. The sourcing script sets bench_name (its name in messages) first, and changes
# to the source root; some functions also read the caller's globals ($out, $nginx, $server_port,
# $prio), as each one's comment says.

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

# ---- the run's session ----------------------------------------------------------------------

# Starts the measured part of a run: creates $out, exports LOADAVG_VAR (the load average now, for
# the JSON), makes $tmp with an empty $manifest in it, and on exit stops the servers still running
# (SIGNAL: INT, or TERM where redis-server may be one) and removes $tmp. Sets prio_desc (the
# priority the runs get, for the report). With AUTOGROUP=1 and autogroup scheduling
# (sched_autogroup_enabled), where a nice value only weighs against the same session's tasks and a
# build in another session still gets an equal share (a benchmark beside four builds got a fifth of
# a core), this session's autogroup gets nice -10 too when root, for the run only (restored on
# exit).
bench_session() {  # LOADAVG_VAR SIGNAL AUTOGROUP(0|1)
  bench_stop_signal=$2
  prio_desc=${prio[*]:-nice 0}
  autogroup_old=""
  if [ "$3" = 1 ] && [ "$(id -u)" -eq 0 ] && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] &&
    [ -w /proc/$$/autogroup ]; then
    autogroup_old=$(sed -n 's/.* nice \(-\{0,1\}[0-9]*\)$/\1/p' /proc/$$/autogroup)
  fi
  mkdir -p "$out"
  export "$1=$(cat /proc/loadavg)"
  tmp=$(mktemp -d "/tmp/$bench_name.XXXXXX")
  manifest=$tmp/runs.tsv
  : >"$manifest"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  if [ -n "$autogroup_old" ]; then
    echo -10 >/proc/$$/autogroup && prio_desc+=", session autogroup nice -10" || autogroup_old=""
  fi
}

bench_cleanup() {
  kill_live_servers "$bench_stop_signal"
  rm -rf "$tmp"
  [ -z "$autogroup_old" ] || echo "$autogroup_old" >/proc/$$/autogroup 2>/dev/null || true
}

# Runs COMMAND with its stdout (and its stderr too when MERGE is 1) to FILE; writes "CPU_S WALL_S"
# to FILE.cpu: its CPU time, from the kernel's accounting of the waited-for child, and the wall
# time. Returns COMMAND's exit status.
run_measured() {  # FILE MERGE(0|1) COMMAND...
  python3 -c '
import resource, subprocess, sys, time
t0 = time.monotonic()
with open(sys.argv[1], "w") as out:
    code = subprocess.run(sys.argv[3:], stdout=out,
                          stderr=subprocess.STDOUT if sys.argv[2] == "1" else None).returncode
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1] + ".cpu", "w").write(f"{ru.ru_utime + ru.ru_stime} {wall}\n")
sys.exit(code)' "$@"
}

# redis-benchmark on core 1 against 127.0.0.1:$server_port, stdout to FILE, "CPU_S WALL_S" to
# FILE.cpu (run_measured).
run_redis_benchmark() {  # FILE ARG...
  local file=$1
  shift
  run_measured "$file" 0 timeout 600 "${prio[@]}" taskset -c 1 redis-benchmark -h 127.0.0.1 -p "$server_port" "$@"
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

# nginx on core 0 from a config generated in $tmp/nginx: one worker process, no master, no access
# log, the page http_server serves. keepalive_requests is raised so that nginx, like http_server,
# keeps each wrk connection for the whole run (its default closes one every 1000 requests).
# LISTEN_OPTS follow the listen address (" ssl"); SERVER_LINES (indented, one directive a line) go
# into the server block. Uses $nginx; sets server_pid and server_port, or stops it and returns 1
# if it does not listen within 30 s.
start_nginx_with() {  # LISTEN_OPTS SERVER_LINES
  local dir=$tmp/nginx i extra=""
  [ -z "$2" ] || extra="$2"$'\n'
  server_port=$(free_port)
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$server_port$1;
${extra}    location / {
      default_type text/html;
      return 200 "<h1>Index Page</h1>";
    }
  }
}
EOF
  "${prio[@]}" taskset -c 0 "$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$tmp/nginx.out" 2>&1 &
  server_pid=$!
  live_pids+=("$server_pid")
  for ((i = 0; i <= 300; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$server_port") 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  warn "nginx did not listen on 127.0.0.1:$server_port within 30 s:"
  cat "$tmp/nginx.out" "$dir/error.log" >&2 || true
  stop_pid "$server_pid" INT nginx
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
