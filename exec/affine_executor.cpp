#include "exec/affine_executor.h"

#include <cstring>
#include <vector>

namespace pac {

std::unique_ptr<StageExecutor> executor_create_builtin(const std::string& name) {
  if (name == "affine") return std::make_unique<AffineExecutor>();
  throw InputError("unknown executor \"" + name + "\" (built in: affine)");
}

json AffineExecutor::on_assign(const JsonIn& a, WorkerContext& ctx) {
  a.check_keys({"executor", "stage", "scale", "shift", "next"});
  int stage = static_cast<int>(a.integer("stage", 0, 1 << 20));
  float scale = static_cast<float>(a.number("scale"));
  float shift = static_cast<float>(a.number("shift"));
  std::string next_id, next_address;
  if (auto next = a.find("next")) {
    next->check_keys({"id", "address"});
    next_id = next->string("id");
    next_address = next->string("address");
  }
  std::lock_guard<std::mutex> lk(mu_);
  stage_ = stage;
  scale_ = scale;
  shift_ = shift;
  next_id_ = next_id;
  next_address_ = next_address;
  tensors_ = elements_ = 0;
  sum_out_ = 0;
  assigned_ = true;
  return {{"device", ctx.device_id()}, {"executor", name()}, {"stage", stage}};
}

void AffineExecutor::on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags,
                               WorkerContext& ctx) {
  if (type != MsgType::Activation)
    throw InputError(std::string("affine executor takes activations, got ") + msg_type_name(type) + " from " + from.str());
  if (t.header.dtype != TensorDtype::F32)
    throw InputError(std::string("affine executor takes f32 tensors, got ") + tensor_dtype_name(t.header.dtype) +
                     " from " + from.str());
  float scale, shift;
  std::string next_id, next_address;
  int stage;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!assigned_) throw InputError("affine executor got a tensor from " + from.str() + " before its assignment");
    scale = scale_;
    shift = shift_;
    next_id = next_id_;
    next_address = next_address_;
    stage = stage_;
  }
  size_t n = static_cast<size_t>(t.header.numel());
  std::vector<float> y(n);
  std::memcpy(y.data(), t.data, n * sizeof(float));  // frame bytes may be unaligned
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    y[i] = scale * y[i] + shift;
    sum += y[i];
  }
  {
    // Count before sending: once the result is out, the coordinator may ask for the
    // counts at once, and they must already include this tensor.
    std::lock_guard<std::mutex> lk(mu_);
    tensors_++;
    elements_ += static_cast<long>(n);
    sum_out_ += sum;
  }
  TensorHeader h = t.header;
  h.stage = static_cast<uint32_t>(stage);
  Connection& out = next_id.empty() ? ctx.coordinator() : ctx.peer(next_id, next_address);
  out.send_tensor(MsgType::Activation, h, y.data(), n * sizeof(float), flags);
}

json AffineExecutor::run_step(const JsonIn& step, WorkerContext& ctx) {
  std::lock_guard<std::mutex> lk(mu_);
  return {{"device", ctx.device_id()}, {"stage", stage_}, {"tensors", tensors_}, {"elements", elements_},
          {"sum_out", sum_out_}};
}

}  // namespace pac
