#!/usr/bin/env bash
# Misused templates must fail with skein's own static_assert message as the first error, not an
# error deep inside <optional>. Usage: static_assert_check.sh SOURCE_ROOT COMPILER...
set -euo pipefail
root=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
status=0
check() {  # check NAME EXPECTED_MESSAGE CODE
  printf '%s\n' "$3" >"$dir/$1.cpp"
  local out
  if out=$("${compiler[@]}" -std=c++20 -fsyntax-only -I"$root/include" -I"$root/runtime" -I"$root/net" \
      "$dir/$1.cpp" 2>&1); then
    echo "FAIL $1: compiled"
    status=1
    return
  fi
  local first
  first=$(grep -m1 'error' <<<"$out" || true)
  if grep -qF "$2" <<<"$first"; then
    echo "ok   $1: $first"
  else
    echo "FAIL $1: first error is not skein's: $first"
    status=1
  fi
}
compiler=("$@")
check task_ref "skein::Task<T&>: a task cannot return a reference" \
  $'#include <skein/task.hpp>\nint x;\nvoid f() { auto t = skein::spawn([]() -> int& { return x; }); }'
check channel_ref "skein::Channel<T&>: a channel carries values" \
  $'#include <skein/channel.hpp>\nvoid f() { skein::Channel<int&> ch; }'
check channel_const "skein::Channel<T>: T must be a non-const, non-array object type" \
  $'#include <skein/channel.hpp>\nvoid f() { skein::Channel<const int> ch; }'
check generator_ref "skein::Generator<T&>: a generator yields values" \
  $'#include <skein/generator.hpp>\nint x;\nvoid f() { skein::Generator<int&> g([](skein::Yield<int&>& y) { y(x); }); }'
check coroutine_void_in "skein::Coroutine<void, Out>: with nothing to send in" \
  $'#include <skein/coroutine.hpp>\nvoid f() { skein::Coroutine<void, int> c([](skein::CoYield<void, int>&) {}); }'
check coroutine_void_out "skein::Coroutine<In, void>: the body must yield values" \
  $'#include <skein/coroutine.hpp>\nvoid f() { skein::Coroutine<int, void> c([](skein::CoYield<int, void>&, int) {}); }'
exit $status
