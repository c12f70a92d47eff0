#include "src/core/rows.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace pac {

RowRange micro_batch_rows(int n, int M, int m) {
  RowRange r;
  // 64-bit products: n*M stays small, but keep the rule overflow-free anyway.
  r.begin = static_cast<int>(static_cast<int64_t>(m) * n / M);
  r.end = static_cast<int>(static_cast<int64_t>(m + 1) * n / M);
  return r;
}

// The boundary before device g: b + round(c_g * size), with c_0 = 0 and c_G = 1 exactly
// (summing the shares in one fixed order makes every device compute the same doubles).
static int share_boundary(const RowRange& mb, const std::vector<double>& shares, int g) {
  int G = static_cast<int>(shares.size());
  if (g <= 0) return mb.begin;
  if (g >= G) return mb.end;
  double c = 0;
  for (int i = 0; i < g; i++) c += shares[i];
  int off = static_cast<int>(std::llround(c * mb.size()));
  if (off > mb.size()) off = mb.size();
  return mb.begin + off;
}

RowRange share_rows(const RowRange& mb, const std::vector<double>& shares, int g) {
  RowRange r;
  r.begin = share_boundary(mb, shares, g);
  r.end = share_boundary(mb, shares, g + 1);
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

// Shares as integer weights in units of 2^-20 of the stage's work. The row rule compares
// them exactly in int64, so every device picks the same device for every row without
// relying on floating-point ties (equal shares such as 1/3 tie exactly). 2^-20 is finer
// than the 1e-6 the fragment's share sum is checked to. All-zero shares (not a valid
// plan, but harmless) count as equal.
static std::vector<int64_t> share_weights(const std::vector<double>& shares, int64_t* total) {
  std::vector<int64_t> w(shares.size());
  int64_t W = 0;
  for (size_t g = 0; g < shares.size(); g++) {
    double s = shares[g] > 0 ? shares[g] : 0;
    w[g] = std::llround(s * (1 << 20));
    W += w[g];
  }
  if (W == 0) {
    for (int64_t& x : w) x = 1;
    W = static_cast<int64_t>(w.size());
  }
  *total = W;
  return w;
}

std::vector<int> stage_row_counts(const RowRange& rows, const std::vector<double>& shares) {
  int G = static_cast<int>(shares.size());
  std::vector<int> count(G, 0);
  if (G == 0) return count;
  int64_t W = 0;
  std::vector<int64_t> w = share_weights(shares, &W);
  // deficit[g] = w_g * (r + 1) - W * (rows given to g so far) = W * (s_g * (r + 1) - count_g):
  // how far g lags behind its share after row r. Row r goes to the largest deficit,
  // lowest g on ties (smooth weighted round-robin). The walk starts at row 0 of the
  // mini-batch whatever `rows` is, so micro-batch m continues where m - 1 stopped.
  std::vector<int64_t> deficit(G, 0);
  for (int r = 0; r < rows.end; r++) {
    int best = 0;
    for (int g = 0; g < G; g++) {
      deficit[g] += w[g];
      if (deficit[g] > deficit[best]) best = g;
    }
    deficit[best] -= W;
    if (r >= rows.begin) count[best]++;
  }
  return count;
}

std::vector<RowRange> stage_split(const RowRange& mb, const std::vector<double>& shares) {
  std::vector<int> count = stage_row_counts(mb, shares);
  std::vector<RowRange> out(count.size());
  int next = mb.begin;
  for (size_t g = 0; g < count.size(); g++) {
    out[g].begin = next;
    next += count[g];
    out[g].end = next;
  }
  return out;
}

std::vector<std::vector<int>> stage_rows_per_micro_batch(int n, int M, const std::vector<double>& shares) {
  std::vector<std::vector<int>> out;
  for (int m = 0; m < M; m++) out.push_back(stage_row_counts(micro_batch_rows(n, M, m), shares));
  return out;
}

double stage_rows_bound_s(double rows, const std::vector<double>& row_s, double inv) {
  double t = 0;
  if (inv <= 0)
    for (double r : row_s) inv += 1.0 / r;
  // 1e-9: a share that is a whole number of rows (2 of 4 at even shares) is that many.
  for (double r : row_s) t = std::max(t, std::ceil(rows / (r * inv) - 1e-9) * r);
  return t;
}

}  // namespace pac
