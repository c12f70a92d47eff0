#!/usr/bin/env bash
# Installs dependencies, builds everything and runs the whole test suite with ctest,
# printing how long each part took ("[ci] <part>: <s> s"; issue 6). Every part runs even
# when an earlier test part failed, so one CI log shows all failures; the exit code is
# the first failure's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ci-timed.sh
start=$(date +%s)
ci_timed "dependencies" bash scripts/setup-deps.sh
ci_timed "build" bash scripts/build.sh
build=${BUILD_DIR:-build}
export PAC_MODEL_DIR=${PAC_MODEL_DIR:-$(cd .. && pwd)/shared/models}
cd "$build"
jobs=${PAC_TEST_JOBS:-2}
# The gates first (cheap, and what CI guards): planner quality against the committed
# baseline (tests/quality/), then the fidelity harness (its simulated side; the
# measured comparison is bench/fidelity.py, docs/fidelity.md).
gates='^(PlannerQuality|SimFidelity)'
rc=0
part() {  # part <name> <command...>: run it timed; remember the first failure
  local r=0
  ci_timed "$@" || r=$?
  if [ "$rc" -eq 0 ]; then rc=$r; fi
}
part "planner quality gate" ctest --output-on-failure --timeout 900 -R '^PlannerQuality'
part "fidelity harness (simulated side)" ctest --output-on-failure --timeout 900 -R '^SimFidelity'
part "unit and integration tests" ctest --output-on-failure -j "$jobs" --timeout 900 -E "$gates"
echo "[ci] total: $(( $(date +%s) - start )) s" >&2
exit "$rc"
