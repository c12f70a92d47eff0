#include "exec/executors.h"

#include "exec/stage_executor.h"
#include "exec/pac_executor.h"
#include "exec/train_executor.h"
#include "src/common/error.h"

namespace pac {

std::unique_ptr<StageExecutor> executor_create_runtime(const std::string& name) {
  if (name == "pac-pipeline") return pac_executor_create();
  if (name == "pipeline-train") return train_executor_create();
  if (name == "affine") return executor_create_builtin(name);
  throw InputError("unknown executor \"" + name + "\" (known: affine, pac-pipeline, pipeline-train)");
}

}  // namespace pac
