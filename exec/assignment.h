// From a plan to what each device does (issue 5, step a): which backbone layers and
// side-network blocks it holds, which rows of every micro-batch it computes, which
// devices of the neighbouring stages it exchanges which rows with, and its group.
//
// The assignment is the plan's phase (stages: layer range, devices, shares) plus the
// device's position in it; rows are derived on demand from the actual mini-batch size,
// because the last mini-batch of an epoch may be short and a test may run a smaller
// batch than the scenario's. Every device computes the same splits from the same
// integers, so no device ever has to ask another which rows it holds.
//
// Row arithmetic: src/core/rows.h (the planner prices the same whole rows).
//
// Side network (src/llm/side_network.h): block i (1..L) consumes b_i, the output of
// backbone layer i-1, so the stage holding layers [lb, le) holds side blocks
// [lb+1, le+1). The first stage also holds the embedding and down0 (a_0 = Down_0(b_0));
// the last stage holds norm, up, gate and the frozen head (final norm, classifier).
//
// No torch here: the coordinator, the planner tests and the worker all use it.
#pragma once
#include <string>
#include <vector>

#include "src/common/json_in.h"
#include "src/core/plan.h"
#include "src/core/rows.h"

namespace pac {

struct StageInfo {
  int layer_begin = 0, layer_end = 0;   // backbone layers [begin, end), global order
  std::vector<int> devices;             // indices into the scenario's devices
  std::vector<std::string> device_ids;
  std::vector<std::string> addresses;   // "host:port"; "" until the coordinator knows it
  std::vector<double> shares;
};

// One device's part of one phase.
struct Assignment {
  std::string phase_kind;               // "pipeline" | "data_parallel"
  int phase_index = 0;
  int epoch_first = 1, epoch_last = 1;
  int micro_batches = 1;
  int n_layers = 0;                     // the model's layers L
  std::vector<StageInfo> stages;        // the whole phase (every device knows its neighbours)
  int device = -1;                      // this device's index in the scenario
  std::string device_id;
  int stage = -1;                       // its stage
  int group_rank = -1;                  // its position in the stage's device list

  const StageInfo& my_stage() const { return stages[stage]; }
  int layer_begin() const { return my_stage().layer_begin; }
  int layer_end() const { return my_stage().layer_end; }
  // Side blocks [side_block_begin, side_block_end), 1-based as in SideNetwork::blocks[i-1].
  int side_block_begin() const { return layer_begin() + 1; }
  int side_block_end() const { return layer_end() + 1; }
  bool has_embedding() const { return stage == 0; }
  bool has_head() const { return stage == static_cast<int>(stages.size()) - 1; }
  int group_size() const { return static_cast<int>(my_stage().devices.size()); }
};

// This device's rows of micro-batch m of an n-row mini-batch.
RowRange assignment_rows(const Assignment& a, int n, int m);
// A transfer between this device and one device of a neighbouring stage.
struct PeerRows {
  int stage_index = 0;   // index of the peer's position in its stage's device list
  std::string id, address;
  RowRange rows;         // rows both hold (non-empty)
};
// Devices of stage `stage + 1` (downstream, forward sends) or `stage - 1` (upstream,
// gradient sends) that share rows of micro-batch m with this device. Empty at the ends.
std::vector<PeerRows> assignment_down_peers(const Assignment& a, int n, int m);
std::vector<PeerRows> assignment_up_peers(const Assignment& a, int n, int m);

// Every device's assignment for phase `phase` of the plan (indexed by scenario device;
// devices the phase does not use get stage -1). Addresses come from the scenario.
std::vector<Assignment> assignments_make(const Plan& plan, int phase);

// The assign fragment's "assignment" member and back (InputError naming the path).
json assignment_to_json(const Assignment& a);
Assignment assignment_from_json(const JsonIn& in);

}  // namespace pac
