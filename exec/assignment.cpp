#include "exec/assignment.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "src/common/error.h"

namespace pac {

RowRange assignment_rows(const Assignment& a, int n, int m) {
  return stage_split(micro_batch_rows(n, a.micro_batches, m), a.my_stage().shares)[a.group_rank];
}

static std::vector<PeerRows> neighbour_rows(const Assignment& a, int n, int m, int other_stage) {
  std::vector<PeerRows> out;
  if (other_stage < 0 || other_stage >= static_cast<int>(a.stages.size())) return out;
  RowRange mine = assignment_rows(a, n, m);
  const StageInfo& st = a.stages[other_stage];
  std::vector<RowRange> split = stage_split(micro_batch_rows(n, a.micro_batches, m), st.shares);
  for (int h = 0; h < static_cast<int>(st.devices.size()); h++) {
    const RowRange& theirs = split[h];
    RowRange both{std::max(mine.begin, theirs.begin), std::min(mine.end, theirs.end)};
    if (both.size() == 0) continue;
    PeerRows p;
    p.stage_index = h;
    p.id = st.device_ids[h];
    p.address = st.addresses[h];
    p.rows = both;
    out.push_back(p);
  }
  return out;
}

std::vector<PeerRows> assignment_down_peers(const Assignment& a, int n, int m) {
  return neighbour_rows(a, n, m, a.stage + 1);
}

std::vector<PeerRows> assignment_up_peers(const Assignment& a, int n, int m) {
  return neighbour_rows(a, n, m, a.stage - 1);
}

std::vector<Assignment> assignments_make(const Plan& plan, int phase) {
  if (phase < 0 || phase >= static_cast<int>(plan.phases.size()))
    throw InputError("plan: no phase " + std::to_string(phase) + " (the plan has " +
                     std::to_string(plan.phases.size()) + ")");
  const Phase& ph = plan.phases[phase];
  const Scenario& sc = plan.scenario;
  int n_dev = static_cast<int>(sc.devices.size());
  Assignment base;
  base.phase_kind = ph.kind;
  base.phase_index = phase;
  base.epoch_first = ph.epoch_first;
  base.epoch_last = ph.epoch_last;
  base.micro_batches = std::max(1, ph.micro_batches);
  base.n_layers = sc.model.total_layers();
  for (const StagePlan& sp : ph.stages) {
    StageInfo si;
    si.layer_begin = sp.layer_begin;
    si.layer_end = sp.layer_end;
    si.devices = sp.devices;
    si.shares = sp.shares;
    if (sp.shares.size() != sp.devices.size())
      throw InputError("plan: phase " + std::to_string(phase) + ": a stage has " + std::to_string(sp.devices.size()) +
                       " devices but " + std::to_string(sp.shares.size()) + " shares");
    for (int d : sp.devices) {
      if (d < 0 || d >= n_dev) throw InputError("plan: phase " + std::to_string(phase) + ": no device " + std::to_string(d));
      si.device_ids.push_back(sc.devices[d].id);
      si.addresses.push_back(sc.devices[d].address);
    }
    base.stages.push_back(si);
  }
  std::vector<Assignment> out(n_dev, base);
  for (int d = 0; d < n_dev; d++) {
    out[d].device = d;
    out[d].device_id = sc.devices[d].id;
  }
  for (int s = 0; s < static_cast<int>(base.stages.size()); s++)
    for (int g = 0; g < static_cast<int>(base.stages[s].devices.size()); g++) {
      Assignment& a = out[base.stages[s].devices[g]];
      if (a.stage >= 0)
        throw InputError("plan: phase " + std::to_string(phase) + ": device " + a.device_id + " is in two stages");
      a.stage = s;
      a.group_rank = g;
    }
  return out;
}

json assignment_to_json(const Assignment& a) {
  json stages = json::array();
  for (const StageInfo& s : a.stages)
    stages.push_back({{"layer_begin", s.layer_begin},
                      {"layer_end", s.layer_end},
                      {"devices", s.devices},
                      {"device_ids", s.device_ids},
                      {"addresses", s.addresses},
                      {"shares", s.shares}});
  return {{"phase_kind", a.phase_kind}, {"phase_index", a.phase_index}, {"epoch_first", a.epoch_first},
          {"epoch_last", a.epoch_last}, {"micro_batches", a.micro_batches}, {"n_layers", a.n_layers},
          {"stages", stages},           {"device", a.device},           {"device_id", a.device_id},
          {"stage", a.stage},           {"group_rank", a.group_rank}};
}

Assignment assignment_from_json(const JsonIn& in) {
  in.check_keys({"phase_kind", "phase_index", "epoch_first", "epoch_last", "micro_batches", "n_layers", "stages",
                 "device", "device_id", "stage", "group_rank"});
  Assignment a;
  a.phase_kind = in.choice("phase_kind", {"pipeline", "data_parallel"});
  a.phase_index = static_cast<int>(in.integer("phase_index", 0, 1000));
  a.epoch_first = static_cast<int>(in.integer("epoch_first", 1, 1000000));
  a.epoch_last = static_cast<int>(in.integer("epoch_last", a.epoch_first, 1000000));
  a.micro_batches = static_cast<int>(in.integer("micro_batches", 1, 1 << 20));
  a.n_layers = static_cast<int>(in.integer("n_layers", 1, 1 << 16));
  a.device = static_cast<int>(in.integer("device", 0, 1 << 20));
  a.device_id = in.string("device_id");
  int next_layer = 0;
  for (const JsonIn& s : in.at("stages").items()) {
    s.check_keys({"layer_begin", "layer_end", "devices", "device_ids", "addresses", "shares"});
    StageInfo si;
    si.layer_begin = static_cast<int>(s.integer("layer_begin", 0, a.n_layers));
    si.layer_end = static_cast<int>(s.integer("layer_end", si.layer_begin + 1, a.n_layers));
    if (si.layer_begin != next_layer)
      s.fail_at("layer_begin", "expected " + std::to_string(next_layer) + " (stages are consecutive layer ranges)");
    next_layer = si.layer_end;
    for (const JsonIn& d : s.at("devices").items()) si.devices.push_back(static_cast<int>(d.as_int(0, 1 << 20)));
    for (const JsonIn& d : s.at("device_ids").items()) si.device_ids.push_back(d.as_string());
    for (const JsonIn& d : s.at("addresses").items()) si.addresses.push_back(d.as_string());
    double sum = 0;
    for (const JsonIn& d : s.at("shares").items()) {
      si.shares.push_back(d.as_number(0, 1));
      sum += si.shares.back();
    }
    if (si.devices.empty() || si.device_ids.size() != si.devices.size() || si.addresses.size() != si.devices.size() ||
        si.shares.size() != si.devices.size())
      s.fail("expected non-empty devices, device_ids, addresses and shares of equal length");
    if (std::fabs(sum - 1) > 1e-6) s.fail_at("shares", "expected shares summing to 1, got " + std::to_string(sum));
    a.stages.push_back(si);
  }
  if (a.stages.empty() || next_layer != a.n_layers)
    in.fail_at("stages", "expected stages covering layers [0, " + std::to_string(a.n_layers) + ")");
  a.stage = static_cast<int>(in.integer("stage", 0, static_cast<int64_t>(a.stages.size()) - 1));
  a.group_rank = static_cast<int>(in.integer("group_rank", 0, static_cast<int64_t>(a.my_stage().devices.size()) - 1));
  if (a.my_stage().device_ids[a.group_rank] != a.device_id)
    in.fail_at("group_rank", "expected the position of device " + a.device_id + " in its stage's device_ids");
  return a;
}

}  // namespace pac
