// AffineExecutor: a pipeline stage that applies y = scale * x + shift to every f32
// tensor it receives and streams the result on, worker to worker, the last stage back
// to the coordinator. Three stages give x -> a3(a2(a1 x + b1) + b2) + b3, a closed
// form the coordinator checks, so the whole runtime path (assign, streams between
// workers, results) is exercised with real numbers.
//
// Assignment:
//   {"executor":"affine", "stage":1, "scale":2.0, "shift":-1.0,
//    "next":{"id":"w2","address":"127.0.0.1:40123"}}   // omit "next" on the last stage
// Step ("Start") -> Result: {"tensors":N, "elements":E, "sum_out":S} since the assignment.
#pragma once
#include <mutex>

#include "exec/stage_executor.h"

namespace pac {

class AffineExecutor : public StageExecutor {
 public:
  std::string name() const override { return "affine"; }
  json on_assign(const JsonIn& assignment, WorkerContext& ctx) override;
  void on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags, WorkerContext& ctx) override;
  json run_step(const JsonIn& step, WorkerContext& ctx) override;

 private:
  std::mutex mu_;
  bool assigned_ = false;
  int stage_ = 0;
  float scale_ = 1, shift_ = 0;
  std::string next_id_, next_address_;  // empty: results go to the coordinator
  long tensors_ = 0, elements_ = 0;
  double sum_out_ = 0;
};

}  // namespace pac
