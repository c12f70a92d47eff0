#include "exec/train_driver.h"

#include "exec/pac_driver.h"
#include "src/common/error.h"

namespace pac {

json train_settings(const MethodSpec& m, Coordinator& c, const std::vector<Assignment>& as) {
  if (m.kind != "full" && m.kind != "lora" && m.kind != "adapters")
    throw InputError("method.kind: the pipeline-train executor runs full, lora or adapters, got \"" + m.kind + "\"");
  json s = {{"executor", "pipeline-train"},  {"method", m.kind},
            {"lora_rank", m.lora_rank},       {"lora_alpha", m.lora_alpha},
            {"lora_mlp", m.lora_mlp},         {"adapter_bottleneck", m.adapter_bottleneck}};
  // The tied embedding's group (first + last stage) is hosted by stage 0's first device.
  if (m.kind == "full" && !as.empty() && as[0].stages.size() > 1) {
    std::string host = address_host(c.worker(as[0].stages[0].devices[0]).address);
    s["tie_store"] = {{"host", host}, {"port", tcp_free_port(host)}};
  }
  return s;
}

}  // namespace pac
