// The analytic cost model: per layer and per fine-tuning method, the work, bytes and
// memory of one training sample, derived from the architecture (ModelConfig), the
// method (MethodSpec) and the data shape (DataSpec). Nothing here is typed in by hand;
// docs/planner.md gives the formulas and their sources.
//
// Layers are numbered in the model's global order: encoder layers first, then decoder
// layers (decoder-only models: decoder layers only). The token embedding is charged to
// layer 0 and the output head (plus final norm) to the last layer, so a stage that
// holds layer 0 also holds the embedding.
#pragma once
#include <string>
#include <vector>

#include "src/core/scenario.h"

namespace pac {

// One layer, per training sample. Fields are additive so that prefix sums give any
// layer range (cost_range).
struct LayerCost {
  double params = 0;          // backbone parameters resident with this layer (embedding/head included)
  double trainable = 0;       // parameters the method trains here (full: = params)
  double fwd_flops = 0;       // backbone forward, incl. LoRA/adapter modules inside it
  double bwd_flops = 0;       // backward through the backbone (0 for parallel adapters)
  double side_fwd_flops = 0;  // parallel adapters: the side network's forward
  double side_bwd_flops = 0;  // parallel adapters: the side network's backward
  double side_frozen_params = 0;  // frozen weights a cached epoch still needs (the output head)
  double act_bytes = 0;       // activations held from forward until backward (training with the backbone)
  double side_act_bytes = 0;  // activations held in a cached epoch (side network only)
  double out_bytes = 0;       // forward message to the next stage when a stage ends after this layer
  double grad_bytes = 0;      // backward message to this layer's stage from the next one
  double tap_bytes = 0;       // activation-cache bytes written for this layer (b_i; layer 0 also b_0)
  void add(const LayerCost& o, double sign = 1);
};

struct ModelCost {
  std::vector<LayerCost> layers;    // per layer
  std::vector<LayerCost> prefix;    // prefix[i] = sum of layers [0, i); size layers+1
  double total_params = 0;          // exact count (tied embeddings counted once)
  double total_trainable = 0;
  double tied_head_params = 0;      // counted on layer 0 and on the last layer; one copy when both on one device
  int weight_bytes = 4;             // per backbone parameter (compute dtype)
  int grad_bytes = 4;               // per trainable parameter
  int optimizer_bytes = 8;          // AdamW: two fp32 moments per trainable parameter
  int cache_value_bytes = 2;        // per cached activation value
  bool side_only_backward = false;  // parallel adapters: backward never enters the backbone
  bool cache = false;               // epochs 2+ train from the activation cache
  double cached_head_flops = 0;     // per sample: a cached epoch reruns the frozen head's forward
  int num_layers() const { return (int)layers.size(); }
};

// Exact parameter count of the architecture (embeddings included, tied ones once).
double model_param_count(const ModelConfig& m);

ModelCost cost_model_build(const ModelConfig& m, const MethodSpec& method, const DataSpec& data);

// Sum of layers [b, e).
LayerCost cost_range(const ModelCost& mc, int b, int e);

// Memory of one device holding layers [b, e).
struct StageMemory {
  double weights = 0, grads = 0, optimizer = 0, activations = 0, buffers = 0;
  double total() const { return weights + grads + optimizer + activations + buffers; }
};
// Training with the backbone (pipeline or data parallel): `held_samples` samples'
// activations in flight (1F1B: micro-batches in flight x this device's share), and
// `micro_samples` samples in one message / cache-write buffer.
StageMemory stage_memory(const ModelCost& mc, int b, int e, double held_samples, double micro_samples);
// A cached epoch: the whole side network (all layers) on `samples` samples per step.
StageMemory cached_memory(const ModelCost& mc, double samples);

// Seconds for the activation cache to write (or read) `records` samples' records of
// `bytes` in all on device `p`: the fixed cost per record plus the bytes at the rate.
double cache_io_s(const DeviceProfile& p, bool write, double records, double bytes);

// Seconds on device `p` for `samples` samples of layers [b, e), as one forward and one
// backward task: each also costs the profile's task_overhead_s (none for 0 samples).
struct StageTime {
  double fwd = 0, bwd = 0;     // compute
  double cache_write = 0;      // storage, overlaps compute (its own resource)
  double cache_read = 0;       // cached epochs: reading the taps back
  double total() const { return fwd + bwd; }
};
StageTime stage_time(const ModelCost& mc, const DeviceProfile& p, const std::string& dtype, int b, int e,
                     double samples);
// A cached epoch step: read taps of all layers and train the side network. Priced by
// the profile's "cached_step" rate when it has one (the whole step as pac-profile timed
// it), else by the side, side_bwd and layer (head) rates.
StageTime cached_time(const ModelCost& mc, const DeviceProfile& p, const std::string& dtype, double samples);

}  // namespace pac
