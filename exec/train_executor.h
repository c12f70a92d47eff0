// The "pipeline-train" StageExecutor: the planner's baselines run for real (issue 5,
// docs/baselines-runtime.md). Every baseline is a pipeline-with-groups shape over the
// same assignment:
//   standalone = 1 stage x 1 device     eddl     = 1 stage x all devices (data parallel)
//   ecofl      = S stages x 1 device    asteroid = S stages x groups (hybrid)
// and the fine-tuning method comes from the fragment: "full", "lora" or "adapters",
// with the single-device Trainer's options (lora_rank, lora_alpha, lora_mlp,
// adapter_bottleneck) so that results are comparable.
//
// A device builds the model from the seed (or a checkpoint) exactly as the Trainer
// does, applies the method, keeps only its stage's layers in memory (plus the embedding
// on the first stage and the final norm / classifier on the last) and trains its
// stage's share of the Trainer's trainable tensors, under the Trainer's names. Per
// micro-batch, in 1F1B order: forward WITH grad, the hidden state h goes downstream,
// dL/dh comes back and is backpropagated, dL/dh_in goes upstream. After the mini-batch
// the stage group sums its gradients in one flat Gloo all-reduce and every member takes
// the same AdamW step.
//
// Tied embedding with full fine-tuning over several stages: the first stage (embedding)
// and the last (classifier) each hold a copy of tok_embeddings.weight. Their gradients
// are summed over a "tie" group (every device of the first and the last stage; store
// from the fragment's "tie_store") so both copies take the identical AdamW step and stay
// equal; only the first stage saves it.
//
// Loss of a row slice = sum(ce * mask) / N, N the mask tokens of the whole mini-batch,
// so gradients summed over slices and micro-batches are the Trainer's.
//
// This header does not include torch.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "exec/stage_executor.h"

namespace pac {

std::unique_ptr<StageExecutor> train_executor_create();

// Merges the stages' saved parts (op "save") into one file in Trainer::save's format,
// loadable by adapter_load / pac-generate --adapter. A tensor saved by two parts, parts
// of different methods or a part that is not a pipeline-train output -> InputError
// naming the file. Written atomically.
void train_parts_merge(const std::vector<std::string>& parts, const std::string& out);

}  // namespace pac
