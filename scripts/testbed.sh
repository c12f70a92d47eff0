#!/usr/bin/env bash
# The emulated edge testbed (docs/testbed.md). Needs root, iproute2 (ip netns, tc), cgroups.
#
#   scripts/testbed.sh up SCENARIO|PLAN [pac-testbed up options]
#        one namespace + veth + tc shaping + cgroup + pac-worker per device; prints the
#        worker addresses, writes $TESTBED_OUT (default /tmp/<input>.testbed.json: the input with the addresses
#        filled in, for pac-run), stays up until Ctrl-C / SIGTERM, then tears down.
#   scripts/testbed.sh down TAG     remove one run (e.g. after `kill -9` of `up`)
#   scripts/testbed.sh cleanup      remove the leftovers of every run
#   scripts/testbed.sh list | check
#
# BUILD_DIR picks the build folder holding bin/pac-testbed and bin/pac-worker (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BUILD_DIR:-build}/bin
tool=$bin/pac-testbed
if [ ! -x "$tool" ]; then
  echo "testbed.sh: $tool not built (run: BUILD_DIR=${BUILD_DIR:-build} scripts/build.sh pac-testbed pac-worker)" >&2
  exit 2
fi
cmd=${1:-}
case "$cmd" in
  up)
    [ $# -ge 2 ] || { echo "usage: scripts/testbed.sh up SCENARIO|PLAN [options]" >&2; exit 2; }
    input=$2
    shift 2
    out=${TESTBED_OUT:-/tmp/$(basename "${input%.json}").testbed.json}
    exec "$tool" up "$input" --worker "$bin/pac-worker" --out "$out" "$@"
    ;;
  down)
    [ $# -eq 2 ] || { echo "usage: scripts/testbed.sh down TAG" >&2; exit 2; }
    exec "$tool" down "$2"
    ;;
  cleanup | list | check)
    exec "$tool" "$cmd"
    ;;
  *)
    echo "usage: scripts/testbed.sh up SCENARIO|PLAN [options] | down TAG | cleanup | list | check" >&2
    exit 2
    ;;
esac
