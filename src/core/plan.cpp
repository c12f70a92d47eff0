#include "src/core/plan.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/topological_sort.hpp>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

static const char* kTaskKindNames[] = {"forward", "backward", "optimizer", "send",
                                       "all_reduce", "all_gather", "cache_write", "cache_read", "local"};

const char* task_kind_name(TaskKind k) { return kTaskKindNames[(int)k]; }

TaskKind task_kind_parse(const std::string& s) {
  for (int i = 0; i < (int)(sizeof kTaskKindNames / sizeof kTaskKindNames[0]); i++) {
    if (s == kTaskKindNames[i]) return (TaskKind)i;
  }
  throw InputError("unknown task kind \"" + s + "\"");
}

// ---- JSON ------------------------------------------------------------------------

static json task_to_json(const Task& t) {
  json j;
  j["id"] = t.id;
  j["kind"] = task_kind_name(t.kind);
  j["device"] = t.device;
  if (t.peer >= 0) j["peer"] = t.peer;
  if (!t.group.empty()) j["group"] = t.group;
  if (t.stage >= 0) j["stage"] = t.stage;
  if (t.micro_batch >= 0) j["micro_batch"] = t.micro_batch;
  if (t.layer_begin >= 0) {
    j["layer_begin"] = t.layer_begin;
    j["layer_end"] = t.layer_end;
  }
  if (t.samples != 0) j["samples"] = t.samples;
  if (t.flops != 0) j["flops"] = t.flops;
  j["seconds"] = t.seconds;
  if (t.first_extra_s > 0) j["first_extra_s"] = t.first_extra_s;
  if (t.bytes != 0) j["bytes"] = t.bytes;
  if (t.mem_alloc_bytes != 0) {
    j["mem_alloc_bytes"] = t.mem_alloc_bytes;
    j["mem_free_task"] = t.mem_free_task;
  }
  j["deps"] = t.deps;
  if (!t.prev_deps.empty()) j["prev_deps"] = t.prev_deps;
  if (!t.label.empty()) j["label"] = t.label;
  return j;
}

static Task task_from_json(const JsonIn& j) {
  j.check_keys({"id", "kind", "device", "peer", "group", "stage", "micro_batch", "layer_begin", "layer_end", "samples",
                "flops", "seconds", "first_extra_s", "bytes", "mem_alloc_bytes", "mem_free_task", "deps", "prev_deps", "label"});
  Task t;
  t.id = (int)j.integer("id", 0);
  try {
    t.kind = task_kind_parse(j.string("kind"));
  } catch (const InputError&) {
    j.fail_at("kind", "expected one of forward, backward, optimizer, send, all_reduce, all_gather, cache_write, "
                      "cache_read, local, got \"" + j.string("kind") + "\"");
  }
  t.device = (int)j.integer("device", 0);
  t.peer = (int)j.integer_or("peer", -1, -1);
  if (auto g = j.find("group")) {
    for (const JsonIn& x : g->items()) t.group.push_back((int)x.as_int(0));
  }
  t.stage = (int)j.integer_or("stage", -1, -1);
  t.micro_batch = (int)j.integer_or("micro_batch", -1, -1);
  t.layer_begin = (int)j.integer_or("layer_begin", -1, -1);
  t.layer_end = (int)j.integer_or("layer_end", -1, -1);
  t.samples = j.number_or("samples", 0, 0);
  t.flops = j.number_or("flops", 0, 0);
  t.seconds = j.number("seconds", 0);
  t.first_extra_s = j.number_or("first_extra_s", 0, 0);
  t.bytes = j.number_or("bytes", 0, 0);
  t.mem_alloc_bytes = j.number_or("mem_alloc_bytes", 0, 0);
  t.mem_free_task = (int)j.integer_or("mem_free_task", -1, -1);
  for (const JsonIn& x : j.at("deps").items()) t.deps.push_back((int)x.as_int(0));
  if (auto pd = j.find("prev_deps")) {
    for (const JsonIn& x : pd->items()) t.prev_deps.push_back((int)x.as_int(0));
  }
  t.label = j.string_or("label", "");
  return t;
}

static std::vector<double> numbers_read(const JsonIn& j) {
  std::vector<double> v;
  for (const JsonIn& x : j.items()) v.push_back(x.as_number());
  return v;
}

static std::vector<int> ints_read(const JsonIn& j) {
  std::vector<int> v;
  for (const JsonIn& x : j.items()) v.push_back((int)x.as_int());
  return v;
}

json plan_to_json(const Plan& p) {
  json j;
  j["format_version"] = p.format_version;
  j["strategy"] = p.strategy;
  j["scenario"] = scenario_to_json(p.scenario);
  j["device_order"] = p.device_order;
  json phases = json::array();
  for (const Phase& ph : p.phases) {
    json stages = json::array();
    for (const StagePlan& st : ph.stages)
      stages.push_back({{"layer_begin", st.layer_begin}, {"layer_end", st.layer_end}, {"devices", st.devices},
                        {"shares", st.shares}});
    phases.push_back({{"kind", ph.kind}, {"epoch_first", ph.epoch_first}, {"epoch_last", ph.epoch_last},
                      {"micro_batches", ph.micro_batches}, {"stages", stages}});
  }
  j["phases"] = phases;
  json segs = json::array();
  for (const Segment& s : p.segments) {
    json tasks = json::array();
    for (const Task& t : s.graph.tasks) tasks.push_back(task_to_json(t));
    json sj = {{"name", s.name}, {"epoch_first", s.epoch_first}, {"epoch_last", s.epoch_last},
               {"repeat", s.repeat}, {"resident_bytes", s.resident_bytes}, {"tasks", tasks}};
    if (s.overlap) sj["overlap"] = true;
    segs.push_back(sj);
  }
  j["segments"] = segs;
  const PlanPrediction& pr = p.predicted;
  j["predicted"] = {{"epoch_s", pr.epoch_s},
                    {"switch_s", pr.switch_s},
                    {"total_s", pr.total_s},
                    {"peak_memory_bytes", pr.peak_memory_bytes},
                    {"energy_j", pr.energy_j},
                    {"planning_s", pr.planning_s}};
  return j;
}

Plan plan_from_json(const JsonIn& j) {
  j.check_keys({"format_version", "strategy", "scenario", "device_order", "phases", "segments", "predicted"});
  Plan p;
  p.format_version = (int)j.integer("format_version", 1, 1);
  p.strategy = j.choice("strategy", {"pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid"});
  p.scenario = scenario_from_json(j.at("scenario"));
  p.device_order = ints_read(j.at("device_order"));
  for (const JsonIn& pj : j.at("phases").items()) {
    pj.check_keys({"kind", "epoch_first", "epoch_last", "micro_batches", "stages"});
    Phase ph;
    ph.kind = pj.choice("kind", {"pipeline", "data_parallel"});
    ph.epoch_first = (int)pj.integer("epoch_first", 1);
    ph.epoch_last = (int)pj.integer("epoch_last", ph.epoch_first);
    ph.micro_batches = (int)pj.integer("micro_batches", 1);
    for (const JsonIn& sj : pj.at("stages").items()) {
      sj.check_keys({"layer_begin", "layer_end", "devices", "shares"});
      StagePlan st;
      st.layer_begin = (int)sj.integer("layer_begin", 0);
      st.layer_end = (int)sj.integer("layer_end", st.layer_begin + 1);
      st.devices = ints_read(sj.at("devices"));
      st.shares = numbers_read(sj.at("shares"));
      if (st.shares.size() != st.devices.size())
        sj.fail_at("shares", "expected one share per device (" + std::to_string(st.devices.size()) + "), got " +
                                 std::to_string(st.shares.size()));
      ph.stages.push_back(st);
    }
    p.phases.push_back(ph);
  }
  for (const JsonIn& sj : j.at("segments").items()) {
    sj.check_keys({"name", "epoch_first", "epoch_last", "repeat", "resident_bytes", "overlap", "tasks"});
    Segment s;
    s.name = sj.string("name");
    s.epoch_first = (int)sj.integer("epoch_first", 1);
    s.epoch_last = (int)sj.integer("epoch_last", s.epoch_first);
    s.repeat = sj.integer("repeat", 1);
    s.overlap = sj.boolean_or("overlap", false);
    s.resident_bytes = numbers_read(sj.at("resident_bytes"));
    for (const JsonIn& tj : sj.at("tasks").items()) s.graph.tasks.push_back(task_from_json(tj));
    p.segments.push_back(s);
  }
  JsonIn pr = j.at("predicted");
  pr.check_keys({"epoch_s", "switch_s", "total_s", "peak_memory_bytes", "energy_j", "planning_s"});
  p.predicted.epoch_s = numbers_read(pr.at("epoch_s"));
  p.predicted.switch_s = pr.number("switch_s", 0);
  p.predicted.total_s = pr.number("total_s", 0);
  p.predicted.peak_memory_bytes = numbers_read(pr.at("peak_memory_bytes"));
  p.predicted.energy_j = numbers_read(pr.at("energy_j"));
  p.predicted.planning_s = pr.number_or("planning_s", 0, 0);
  return p;
}

Plan plan_load(const std::string& file) {
  JsonIn doc = JsonIn::load_file(file);
  Plan p = plan_from_json(doc);
  plan_validate(p, file);
  return p;
}

void plan_save(const Plan& p, const std::string& file) { file_write_atomic(file, plan_to_json(p).dump(1) + "\n"); }

// ---- validation --------------------------------------------------------------------

static std::string task_where(const Segment& s, const Task& t) {
  std::string w = "segment \"" + s.name + "\" task " + std::to_string(t.id);
  if (!t.label.empty()) w += " (" + t.label + ")";
  return w;
}

// Peak of the memory a graph allocates on each device if every task ran as early as
// its dependencies allow, one task at a time in id order: the allocations live from a
// task's start until its mem_free_task ends. Conservative for the DAG's own order.
static std::vector<double> graph_peak_alloc(const TaskGraph& g, int devices) {
  std::vector<double> live(devices, 0), peak(devices, 0);
  std::vector<std::vector<std::pair<int, double>>> frees(g.tasks.size());
  for (const Task& t : g.tasks) {
    if (t.mem_alloc_bytes > 0 && t.device >= 0 && t.device < devices) {
      live[t.device] += t.mem_alloc_bytes;
      peak[t.device] = std::max(peak[t.device], live[t.device]);
      int until = t.mem_free_task >= 0 ? t.mem_free_task : t.id;
      if (until < (int)frees.size()) frees[until].push_back({t.device, t.mem_alloc_bytes});
    }
    for (auto& fr : frees[t.id]) live[fr.first] -= fr.second;
  }
  return peak;
}

void plan_validate(const Plan& p, const std::string& file) {
  const Scenario& s = p.scenario;
  const int n = (int)s.devices.size();
  const int L = s.model.total_layers();
  auto fail = [&](const std::string& where, const std::string& what) { throw_input(file, where, what); };
  auto device_ok = [&](int d) { return d >= 0 && d < n; };

  for (size_t pi = 0; pi < p.phases.size(); pi++) {
    const Phase& ph = p.phases[pi];
    std::string where = "$.phases[" + std::to_string(pi) + "]";
    std::vector<int> placed(L, 0);
    for (size_t si = 0; si < ph.stages.size(); si++) {
      const StagePlan& st = ph.stages[si];
      std::string sw = where + ".stages[" + std::to_string(si) + "]";
      if (st.layer_begin < 0 || st.layer_end > L || st.layer_begin >= st.layer_end)
        fail(sw, "expected a layer range within [0, " + std::to_string(L) + "), got [" + std::to_string(st.layer_begin) +
                     ", " + std::to_string(st.layer_end) + ")");
      for (int l = st.layer_begin; l < st.layer_end; l++) placed[l]++;
      if (st.devices.empty()) fail(sw + ".devices", "expected at least one device");
      double sum = 0;
      for (size_t k = 0; k < st.devices.size(); k++) {
        if (!device_ok(st.devices[k]))
          fail(sw + ".devices[" + std::to_string(k) + "]",
               "device index " + std::to_string(st.devices[k]) + " does not exist (" + std::to_string(n) + " devices)");
        if (st.shares[k] < 0) fail(sw + ".shares[" + std::to_string(k) + "]", "expected a share >= 0");
        sum += st.shares[k];
      }
      if (std::fabs(sum - 1) > 1e-6) fail(sw + ".shares", "expected shares summing to 1, got " + std::to_string(sum));
    }
    for (int l = 0; l < L; l++) {
      if (placed[l] != 1)
        fail(where + ".stages", "layer " + std::to_string(l) + " is placed " + std::to_string(placed[l]) +
                                    " times (expected exactly once)");
    }
  }

  for (size_t si = 0; si < p.segments.size(); si++) {
    const Segment& seg = p.segments[si];
    std::string where = "$.segments[" + std::to_string(si) + "]";
    if (seg.repeat < 0) fail(where + ".repeat", "expected a count >= 0");
    if ((int)seg.resident_bytes.size() != n)
      fail(where + ".resident_bytes", "expected one entry per device (" + std::to_string(n) + ")");
    const auto& tasks = seg.graph.tasks;
    using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS>;
    Graph g(tasks.size());
    for (size_t ti = 0; ti < tasks.size(); ti++) {
      const Task& t = tasks[ti];
      std::string tw = where + ".tasks[" + std::to_string(ti) + "]";
      if (t.id != (int)ti) fail(tw + ".id", "expected id " + std::to_string(ti) + " (ids are indices), got " + std::to_string(t.id));
      if (!device_ok(t.device)) fail(tw + ".device", task_where(seg, t) + ": device " + std::to_string(t.device) + " does not exist");
      if (t.kind == TaskKind::Send && !device_ok(t.peer))
        fail(tw + ".peer", task_where(seg, t) + ": peer device " + std::to_string(t.peer) + " does not exist");
      for (int m : t.group) {
        if (!device_ok(m)) fail(tw + ".group", task_where(seg, t) + ": group device " + std::to_string(m) + " does not exist");
      }
      if (t.seconds < 0 || t.bytes < 0) fail(tw, task_where(seg, t) + ": negative duration or bytes");
      if (t.mem_free_task >= (int)tasks.size())
        fail(tw + ".mem_free_task", task_where(seg, t) + ": frees at task " + std::to_string(t.mem_free_task) + " which does not exist");
      for (int dep : t.deps) {
        if (dep < 0 || dep >= (int)tasks.size())
          fail(tw + ".deps", task_where(seg, t) + ": depends on task " + std::to_string(dep) + " which does not exist");
        boost::add_edge(dep, ti, g);
      }
      for (int dep : t.prev_deps) {
        if (dep < 0 || dep >= (int)tasks.size())
          fail(tw + ".prev_deps", task_where(seg, t) + ": depends on previous-iteration task " + std::to_string(dep) +
                                      " which does not exist");
        if (!seg.overlap)
          fail(tw + ".prev_deps", task_where(seg, t) + ": prev_deps need an overlapped segment (overlap: true)");
      }
    }
    // Acyclic: Boost.Graph's topological sort throws not_a_dag on a cycle. Then make
    // sure every dependency points backwards (the simulator relies on id order).
    try {
      std::vector<size_t> order;
      boost::topological_sort(g, std::back_inserter(order));
    } catch (const boost::not_a_dag&) {
      // Name one task on the cycle: the first whose dep does not precede it.
      for (const Task& t : tasks) {
        for (int dep : t.deps) {
          if (dep >= t.id) fail(where + ".tasks", task_where(seg, t) + " is on a dependency cycle (depends on task " + std::to_string(dep) + ")");
        }
      }
      fail(where + ".tasks", "the task graph has a cycle");
    }
    for (const Task& t : tasks) {
      for (int dep : t.deps) {
        if (dep >= t.id)
          fail(where + ".tasks", task_where(seg, t) + " depends on later task " + std::to_string(dep) + " (ids must be topological)");
      }
    }
    std::vector<double> peak = graph_peak_alloc(seg.graph, n);
    for (int d = 0; d < n; d++) {
      double need = seg.resident_bytes[d] + peak[d];
      double have = s.devices[d].profile.memory_bytes;
      if (need > have * (1 + 1e-9))
        fail(where, "device " + s.devices[d].id + " (index " + std::to_string(d) + ") is over its memory: needs " +
                        std::to_string((long long)(need / 1e6)) + " MB, has " + std::to_string((long long)(have / 1e6)) + " MB");
    }
  }
}

bool plan_writes_cache(const Plan& p) {
  for (const Segment& seg : p.segments)
    for (const Task& t : seg.graph.tasks)
      if (t.kind == TaskKind::CacheWrite) return true;
  return false;
}

int plan_flush_pipelines(Plan& p) {
  int n = 0;
  for (Segment& seg : p.segments) {
    if (!seg.overlap || seg.name != "pipeline") continue;
    seg.overlap = false;
    for (Task& t : seg.graph.tasks) t.prev_deps.clear();
    n++;
  }
  return n;
}

}  // namespace pac
