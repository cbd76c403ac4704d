#!/usr/bin/env bash
# Misused templates fail to compile with skein's own static_assert message, not an error from
# deep inside <optional>. Usage: misuse_test.sh SOURCE_ROOT CXX [CXX ARGS...]
set -uo pipefail
root=$1
shift
failed=0
cxx=("$@")
# expect SNIPPET MESSAGE: compiling SNIPPET must fail, and its first error must carry MESSAGE.
expect() {
  local snippet=$1 message=$2 out
  if out=$(printf '#include <skein/skein.hpp>\n%s\n' "$snippet" |
    "${cxx[@]}" -std=c++20 -fsyntax-only -I"$root/include" -I"$root/runtime" -I"$root/net" -x c++ - 2>&1); then
    echo "FAIL: compiled: $snippet"
    failed=1
  elif ! grep -m1 'error' <<<"$out" | grep -qF "$message"; then
    echo "FAIL: $snippet: the first error is not \"$message\":"
    grep -m3 'error' <<<"$out"
    failed=1
  else
    echo "ok: $snippet"
  fi
}
expect 'int x = 0; skein::Generator<int&> g([](skein::Yield<int&>& y) { y(x); });' \
  'skein::Generator<T&>: a generator yields values'
expect 'skein::Coroutine<void, int> c([](skein::CoYield<void, int>&) {});' \
  'skein::Coroutine<void, Out>: with nothing to send in'
expect 'skein::Coroutine<int, void> c([](skein::CoYield<int, void>&, int) {});' \
  'skein::Coroutine<In, void>: the body must yield values'
exit $failed
