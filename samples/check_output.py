#!/usr/bin/env python3
"""Runs a sample and checks what it printed; the test driver behind `meson test --suite samples`.

    check_output.py [checks...] -- COMMAND [ARGS...]

Checks (each may be repeated; all must hold):
  --exit-code N          the command exits with N (default 0); 'nonzero' accepts any failure
  --expect REGEX         REGEX matches somewhere in stdout (re.MULTILINE: ^ and $ match at lines)
  --expect-stderr REGEX  REGEX matches somewhere in stderr
  --reject REGEX         REGEX matches nowhere in stdout
  --golden FILE          stdout equals FILE's contents exactly
  --number REGEX LO HI   REGEX (with one group capturing a number) matches stdout, and LO <= number <= HI
  --timeout SECONDS      kill the command after SECONDS (default 20)

Exits 0 when every check holds, 1 (printing what failed, and the command's output) otherwise.
"""

import argparse
import re
import os
import shlex
import subprocess
import sys


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("check_output.py: missing '--' before the command", file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    if not command:
        print("check_output.py: no command after '--'", file=sys.stderr)
        return 2

    p = argparse.ArgumentParser(prog="check_output.py")
    p.add_argument("--exit-code", default="0")
    p.add_argument("--expect", action="append", default=[])
    p.add_argument("--expect-stderr", action="append", default=[])
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--golden")
    p.add_argument("--number", nargs=3, action="append", default=[], metavar=("REGEX", "LO", "HI"))
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args(opts)

    try:
        # In a cross build meson test names the emulator (qemu) to run target binaries with.
        wrapper = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
        proc = subprocess.run(wrapper + command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"FAIL: {command!r} did not finish within {args.timeout} s")
        return 1
    out, err = proc.stdout, proc.stderr

    failures = []
    if args.exit_code == "nonzero":
        if proc.returncode == 0:
            failures.append("expected a non-zero exit status, got 0")
    elif proc.returncode != int(args.exit_code):
        failures.append(f"expected exit status {args.exit_code}, got {proc.returncode}")
    for rx in args.expect:
        if not re.search(rx, out, re.MULTILINE):
            failures.append(f"stdout does not match {rx!r}")
    for rx in args.expect_stderr:
        if not re.search(rx, err, re.MULTILINE):
            failures.append(f"stderr does not match {rx!r}")
    for rx in args.reject:
        if re.search(rx, out, re.MULTILINE):
            failures.append(f"stdout matches the rejected {rx!r}")
    if args.golden:
        with open(args.golden, encoding="utf-8") as f:
            want = f.read()
        if out != want:
            failures.append(f"stdout differs from {args.golden}; expected:\n{want}")
    for rx, lo, hi in args.number:
        m = re.search(rx, out, re.MULTILINE)
        if not m:
            failures.append(f"stdout does not match {rx!r}")
            continue
        value = float(m.group(1))
        if not float(lo) <= value <= float(hi):
            failures.append(f"{rx!r} captured {value}, outside [{lo}, {hi}]")

    if failures:
        print(f"FAIL: {' '.join(command)}")
        for f in failures:
            print(f"  - {f}")
        print(f"--- exit status {proc.returncode}; stdout ---\n{out}--- stderr ---\n{err}---")
        return 1
    print(f"ok: {' '.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
