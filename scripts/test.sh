#!/usr/bin/env bash
# Installs dependencies, builds everything and runs the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup-deps.sh
t0=$(date +%s); bash scripts/build.sh; t1=$(date +%s)
echo "test.sh: build took $((t1 - t0)) s"
build=${BUILD_DIR:-build}
export PAC_MODEL_DIR=${PAC_MODEL_DIR:-$(cd .. && pwd)/shared/models}
cd "$build"
ctest --output-on-failure -j "${PAC_TEST_JOBS:-2}" --timeout 900
t2=$(date +%s)
echo "test.sh: tests took $((t2 - t1)) s, total $((t2 - start)) s"
