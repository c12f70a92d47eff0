// Row arithmetic of a mini-batch: which rows each micro-batch holds and which of them
// each device of a stage computes. The runtime deals rows by these rules (exec/
// assignment.h) and the planner prices the same whole rows (planner/planner_dp.cpp,
// planner_graph.cpp), so a plan's times describe what the workers do. No torch.
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
#pragma once
#include <vector>

namespace pac {

struct RowRange {
  int begin = 0, end = 0;  // [begin, end) rows of the mini-batch
  int size() const { return end > begin ? end - begin : 0; }
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

// Rows of each device of a stage (shares) in each micro-batch m of an n-row mini-batch
// of M micro-batches: rows[m][g].
std::vector<std::vector<int>> stage_rows_per_micro_batch(int n, int M, const std::vector<double>& shares);

// The planner's search price of a group computing `rows` rows (a micro-batch, or a whole
// mini-batch for a stage no neighbour waits on) in whole rows at speed-proportional
// shares (share_g = (1/row_s[g]) / sum 1/row_s): every device at the most rows the row
// rule can give it, max over g of ceil(share_g * rows) * row_s[g]. O(g), where dealing
// the rows (stage_rows_per_micro_batch) is O(rows x g); the fluid model would give
// rows / sum(1/row_s), optimistic when the group has few rows per device.
// `inv`: sum of 1/row_s when the caller has it (0: computed here).
double stage_rows_bound_s(double rows, const std::vector<double>& row_s, double inv = 0);

}  // namespace pac
