#!/usr/bin/env bash
# Runs one part of CI and says how long it took (issue 6: "print how long each part took").
#
#   scripts/ci-timed.sh <part> <command> [args...]
#       runs the command, then prints "[ci] <part>: <seconds> s" (plus "(failed, exit N)"
#       when it failed) on stderr, and exits with the command's own exit code.
#   source scripts/ci-timed.sh; ci_timed <part> <command> [args...]
#       the same as a shell function (for .ci/run and scripts/test.sh).
#
# Example: scripts/ci-timed.sh "quality gate" build/tests/planner_quality_test
#          prints  [ci] quality gate: 2.1 s
ci_timed() {
  if [ $# -lt 2 ]; then
    echo "usage: ci_timed <part> <command> [args...]" >&2
    return 2
  fi
  local part=$1
  shift
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" || rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    echo "[ci] $part: $secs s" >&2
  else
    echo "[ci] $part: $secs s (failed, exit $rc)" >&2
  fi
  return "$rc"
}

# Executed (not sourced): run the command line given.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  ci_timed "$@"
  exit $?
fi
