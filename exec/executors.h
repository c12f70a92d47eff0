// The executor registry pac-worker (and the in-process runtime tests) use: name -> a
// fresh StageExecutor. One place to add an executor; no torch here.
#pragma once
#include <memory>
#include <string>

#include "exec/stage_executor.h"

namespace pac {

// "affine" (tests), "pac-pipeline" (Parallel Adapters); InputError naming the known
// executors for anything else.
std::unique_ptr<StageExecutor> executor_create_runtime(const std::string& name);

}  // namespace pac
