// The coordinator's side of a baseline run (docs/baselines-runtime.md): the settings
// that turn pac_assign_phase's fragments into "pipeline-train" fragments for a plan
// whose method is full, lora or adapters. Mini-batches go through pac_train_step and the
// parts come back through pac_save_parts exactly as for PAC; train_parts_merge
// (train_executor.h) makes them one Trainer::save file. No torch here.
#pragma once
#include <string>
#include <vector>

#include "exec/assignment.h"
#include "exec/coordinator.h"
#include "exec/pac_driver.h"  // address_host
#include "src/core/scenario.h"

namespace pac {

// {"executor": "pipeline-train", "method", "lora_rank", "lora_alpha", "lora_mlp",
// "adapter_bottleneck"} from the scenario's method, plus "tie_store" (a free port on the
// host of stage 0's first device) when full fine-tuning runs over more than one stage
// (the executor uses it only for a tied classifier). Merge the result into the settings
// given to pac_assign_phase. InputError for parallel_adapters (that is "pac-pipeline").
json train_settings(const MethodSpec& method, Coordinator& c, const std::vector<Assignment>& as);

}  // namespace pac
