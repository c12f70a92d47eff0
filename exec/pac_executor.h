// The "pac-pipeline" StageExecutor (issue 5, step b): Parallel Adapters phase 1 on one
// device of a pipeline stage group (docs/runtime.md, "PAC executor").
//
// The device builds the frozen backbone and the side network from the same seed as
// every other device (or from a checkpoint), trains only its stage's side blocks (plus
// down0 on the first stage and norm/up/gate on the last), runs its rows of every
// micro-batch in 1F1B order: backbone layers under no-grad, side blocks with grad; b
// (backbone hidden) and a (side state) go downstream worker to worker, dL/da goes
// upstream. After the mini-batch the group all-reduces (sums) its side gradients over
// Gloo and every member takes the same AdamW step.
//
// The loss of a row slice is sum(ce * mask) / N, N the mask tokens of the WHOLE
// mini-batch, so the gradients summed over slices and micro-batches are exactly the
// single-device trainer's masked-mean gradients (up to fp32 summation order).
//
// This header does not include torch (the worker tool and the factory include it).
#pragma once
#include <memory>
#include <string>

#include "exec/stage_executor.h"

namespace pac {

std::unique_ptr<StageExecutor> pac_executor_create();

}  // namespace pac
