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
// Row arithmetic (all devices agree exactly):
//   micro-batch m of a mini-batch of n rows and M micro-batches: [m*n/M, (m+1)*n/M)
//     (integer division; sizes differ by at most one, none empty while n >= M);
//   the devices of a stage with shares s_0..s_{G-1} share out the mini-batch's rows
//     0..n-1 one by one, in order: row r goes to the device g with the largest deficit
//     s_g*(r+1) - count_g (count_g = rows g got before r; lowest g on ties; shares as
//     exact integer weights). Over the mini-batch g gets its share of the rows, spread
//     evenly over the micro-batches (count_g after any k rows lies in
//     (s_g*k - (G-1), s_g*k + 1); within one for two devices), and a micro-batch
//     smaller than the stage is not left to one device every time: shares
//     .125/.25/.25/.375 over 8 one-row micro-batches give rows to devices
//     3,1,2,0,3,1,2,3 (1/2/2/3 forwards each), where rounding each micro-batch's
//     cumulative share gave all 8 to device 2 and left the others idling in the
//     stage's all-reduce (docs/testbed-compare.md).
//   device g's rows of micro-batch [b, e): the contiguous [b + c_0 + .. + c_{g-1},
//     b + c_0 + .. + c_g), c_h = how many of rows b..e-1 the rule gave device h. Only
//     the counts come from the rule: contiguous ranges keep each slice one tensor
//     narrow, and the stage's devices partition the micro-batch in device order.
//   Rows a device sends downstream to device h of the next stage: the intersection of
//   its rows and h's rows (both stages split the same micro-batch, by their own shares).
//   share_rows (one range, rounded cumulative shares) is what the phase switch uses to
//   size each data-parallel rank's part of the samples: one range, nothing to spread.
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

namespace pac {

struct RowRange {
  int begin = 0, end = 0;  // [begin, end) rows of the mini-batch
  int size() const { return end > begin ? end - begin : 0; }
};

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

// Micro-batch m of a mini-batch of n rows split into M micro-batches.
RowRange micro_batch_rows(int n, int M, int m);
// Device g's part of the single range `mb` under `shares`: [b + round(c_g * size),
// b + round(c_{g+1} * size)), c_g = s_0 + .. + s_{g-1}, c_G = 1 (the phase switch's
// sample split; stages split micro-batches with stage_split).
RowRange share_rows(const RowRange& mb, const std::vector<double>& shares, int g);
// How many rows of `rows` (a micro-batch: global rows of the mini-batch, which starts at
// row 0) the row rule of the file comment gives each device of a stage with `shares`.
std::vector<int> stage_row_counts(const RowRange& rows, const std::vector<double>& shares);
// Every device's contiguous rows of micro-batch `mb` (one entry per share, in order).
std::vector<RowRange> stage_split(const RowRange& mb, const std::vector<double>& shares);
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
