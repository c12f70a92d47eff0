// pac-run end to end as processes: plan -> local pac-worker processes -> trained side
// network, compared with the single-device trainer on the same data order (stories260K
// and the shipped personal corpus; skipped with a message when the model is missing).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "planner/planner.h"
#include "src/llm/checkpoint.h"
#include "src/llm/dataset.h"
#include "src/llm/safetensors.h"
#include "src/llm/tokenizer.h"
#include "src/llm/trainer.h"
#include "tests/exec_runtime_util.h"

using namespace pac;

static std::string bin_dir() {
  const char* d = std::getenv("PAC_BIN_DIR");
  return d ? d : std::string(PAC_BINARY_DIR) + "/bin";
}

static int run_cmd(const std::string& cmd) {
  int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const std::string kSrc = PAC_SOURCE_DIR;

// pac-run with local workers on dir/plan.json, the report in dir/report.json and its
// stderr in dir/log.txt; `args` carries the run's own options.
static std::string pac_run_local(const std::string& dir, const std::string& model, const std::string& tok,
                                 const std::string& data, const std::string& args) {
  return bin_dir() + "/pac-run " + dir + "/plan.json --local --quiet --model " + model + " --tokenizer " + tok +
         " --data " + data + " " + args + " --report " + dir + "/report.json 2>" + dir + "/log.txt";
}

static DataOptions data_options(const Tokenizer& tok, int seq) {
  DataOptions d;
  d.seq_len = seq;
  d.bos_id = tok.bos_id();
  d.eos_id = tok.eos_id();
  return d;
}

// The trainer reference of these tests: parallel adapters from a random side init (as
// pac-run's default), `method` otherwise, on stories260K.
static TrainOptions reference_options(const std::string& method, int batch, int seq, double lr, uint64_t seed, int k,
                                      int epochs) {
  TrainOptions o;
  o.method = method;
  o.batch_size = batch;
  o.seq_len = seq;
  o.lr = lr;
  o.seed = seed;
  o.reduction_k = k;
  o.side_random_init = true;
  o.epochs = epochs;
  o.quiet = true;
  return o;
}

TEST(ExecRuntimeRun, PipelineOfTwoProcessesMatchesTheTrainer) {
  std::string model = model_path("stories260K/stories260K.bin"), tok_path = model_path("stories260K/tok512.bin");
  if (!std::filesystem::exists(model) || !std::filesystem::exists(tok_path))
    GTEST_SKIP() << "stories260K not found under " << model_dir() << " (set PAC_MODEL_DIR)";
  std::string dir = testing::TempDir() + "/exec_runtime_run";
  std::filesystem::create_directories(dir);
  // A two-stage pipeline of the two local workers, micro-batches 2: the scenario forces
  // 2 stages, the plan is the planner's.
  Scenario s = scenario_load(kSrc + "/scenarios/local-stories260k.json");
  s.stages = 2;
  Plan plan = plan_make(s, "pac");
  ASSERT_EQ(plan.phases[0].stages.size(), 2u) << "the forced 2-stage plan";
  plan_save(plan, dir + "/plan.json");
  std::string data = kSrc + "/data/personal/train.txt";
  const int steps = 3, batch = 8, seq = 32, k = 4;
  const double lr = 2e-3;
  std::string cmd = pac_run_local(dir, model, tok_path, data,
                                  "--epochs 1 --max-steps 3 --batch-size 8 --seq-len 32 --k 4 --lr 0.002 --seed 5 "
                                  "--timeout-s 30 --out " + dir + "/side.safetensors");
  ASSERT_EQ(run_cmd(cmd), 0) << cmd;

  // The single-device trainer on the same examples, order and hyper-parameters.
  auto tok = tokenizer_load(tok_path);
  DataOptions d = data_options(*tok, seq);
  TrainOptions o = reference_options("parallel_adapters", batch, seq, lr, 5, k, 1);
  o.max_steps = steps;
  TrainSetup setup;
  setup.load_backbone = [&] { return llama_load(model); };
  data_prepare(data, "", 0.1, *tok, d, o.seed, &setup.train, &setup.heldout);
  Trainer tr(o, setup);
  tr.train_epoch(1, nullptr);

  SafeTensors got = safetensors_read(dir + "/side.safetensors");
  EXPECT_EQ(got.metadata["method"], "parallel_adapters");
  auto ref = tr.side()->state();
  ASSERT_EQ(got.tensors.size(), ref.size());
  for (auto& kv : ref) {
    ASSERT_TRUE(got.tensors.count(kv.first)) << kv.first;
    EXPECT_LE(runtime_rel_diff(got.tensors[kv.first], kv.second), 1e-4) << kv.first;
  }
  // The file is a valid fine-tuning result for the backbone (the trainer's loader).
  Llama m = llama_load(model);
  SideNetwork side{nullptr};
  EXPECT_EQ(adapter_load(dir + "/side.safetensors", m, &side), "parallel_adapters");

  json rep = json::parse(std::ifstream(dir + "/report.json"));
  EXPECT_EQ(rep["source"], "run");
  EXPECT_EQ(rep["status"], "ok");
  EXPECT_EQ(rep["tasks"], steps);  // mini-batches driven
  EXPECT_EQ(rep["groups"], "[1-1]");
  // Held-out loss of the distributed result = the trainer's own evaluate() after its
  // 3 steps (same held-out split; fp32 order differences only).
  double ref_eval = tr.evaluate();
  EXPECT_NEAR(rep["eval_loss"].get<double>(), ref_eval, 1e-4 * ref_eval);
  EXPECT_NEAR(rep["perplexity"].get<double>(), std::exp(ref_eval), 1e-3 * std::exp(ref_eval));
  // Bytes per link, closed form: forward carries b (d floats) and a (r = d/k floats)
  // per token, backward dL/da (r floats): 3 steps x 8 rows x 32 tokens x 4 bytes.
  const Plan& p = plan;
  std::string first = p.scenario.devices[p.phases[0].stages[0].devices[0]].id;
  std::string second = p.scenario.devices[p.phases[0].stages[1].devices[0]].id;
  int dm = m->config().dim, r = dm / k;
  double fwd = 3.0 * batch * seq * (dm + r) * 4, bwd = 3.0 * batch * seq * r * 4;
  std::map<std::string, double> got_links;
  for (auto& l : rep["links"]) got_links[l["src"].get<std::string>() + ">" + l["dst"].get<std::string>()] = l["bytes"];
  EXPECT_EQ(got_links[first + ">" + second], fwd);
  EXPECT_EQ(got_links[second + ">" + first], bwd);
  // Memory: every layer of the backbone lives on some worker for the whole of phase 1,
  // so the workers' tensor peaks add up to at least the backbone's bytes (stage 0 and the
  // last stage also hold embedding / head); a worker's tensors are part of its RSS.
  double backbone_bytes = 0, tensor_sum = 0;
  for (auto& kv : m->backbone_named_parameters()) backbone_bytes += kv.second.numel() * 4.0;
  for (auto& dv : rep["devices"]) {
    EXPECT_GT(dv["busy_s"].get<double>(), 0) << dv.dump();
    EXPECT_GT(dv["peak_memory_bytes"].get<double>(), 0) << dv.dump();
    EXPECT_GT(dv["peak_tensor_bytes"].get<double>(), 0) << dv.dump();
    EXPECT_LT(dv["peak_tensor_bytes"].get<double>(), dv["peak_memory_bytes"].get<double>()) << dv.dump();
    tensor_sum += dv["peak_tensor_bytes"].get<double>();
  }
  EXPECT_GE(tensor_sum, backbone_bytes);
}

TEST(ExecRuntimeRun, BadInputExitsTwoNamingTheProblem) {
  std::string dir = testing::TempDir() + "/exec_runtime_run_bad";
  std::filesystem::create_directories(dir);
  { std::ofstream(dir + "/plan.json") << "{\"format_version\": 1}"; }
  std::string cmd = bin_dir() + "/pac-run " + dir + "/plan.json --tokenizer x --data y 2>" + dir + "/err.txt";
  EXPECT_EQ(run_cmd(cmd), 2);
  std::ifstream f(dir + "/err.txt");
  std::string err((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(err.find("plan.json"), std::string::npos) << err;
}

// A worker killed mid-run: pac-run ends with exit 1 and an error naming that device,
// within its timeout, instead of hanging. The kill comes from a wrapper around
// pac-worker that SIGKILLs w1 once w1 has accepted the coordinator and trained a little.
TEST(ExecRuntimeRun, WorkerKilledMidRunIsNamed) {
  std::string model = model_path("stories260K/stories260K.bin"), tok_path = model_path("stories260K/tok512.bin");
  if (!std::filesystem::exists(model) || !std::filesystem::exists(tok_path))
    GTEST_SKIP() << "stories260K not found under " << model_dir() << " (set PAC_MODEL_DIR)";
  std::string dir = testing::TempDir() + "/exec_runtime_run_kill";
  std::filesystem::create_directories(dir);
  Scenario s = scenario_load(kSrc + "/scenarios/local-stories260k.json");
  s.stages = 2;
  plan_save(plan_make(s, "pac"), dir + "/plan.json");
  std::string wrapper = dir + "/worker.sh";
  {
    std::ofstream w(wrapper);
    // $4 is the device id (pac-run passes --listen A --device-id ID ...).
    w << "#!/bin/sh\n"
      << "if [ \"$4\" = w1 ]; then\n"
      << "  \"" << bin_dir() << "/pac-worker\" \"$@\" 2>" << dir << "/w1.log &\n"
      << "  p=$!\n"
      << "  for i in $(seq 1 200); do grep -q 'accepted coordinator' " << dir << "/w1.log 2>/dev/null && break; "
      << "sleep 0.05; done\n"
      << "  sleep 1; kill -9 $p; wait $p; exit 0\n"
      << "fi\n"
      << "exec \"" << bin_dir() << "/pac-worker\" \"$@\"\n";
  }
  std::filesystem::permissions(wrapper, std::filesystem::perms::owner_all);
  std::string cmd = bin_dir() + "/pac-run " + dir + "/plan.json --local --quiet --model " + model + " --tokenizer " +
                    tok_path + " --data " + kSrc + "/data/personal/train.txt --epochs 20 --batch-size 8 " +
                    "--seq-len 32 --k 4 --timeout-s 5 --worker-exe " + wrapper + " 2>" + dir + "/err.txt";
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run_cmd(cmd), 1) << cmd;
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ifstream f(dir + "/err.txt");
  std::string err((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(err.find("w1"), std::string::npos) << err;
  // Start (~2 s) + 1 s of training + the 5 s timeout + cleanup (3 s), with slack.
  EXPECT_LT(secs, 25.0) << err;
}

// pac-run as processes against the single-device trainer for the other paths: the
// activation cache with the switch and data-parallel epochs (parallel adapters), and a
// baseline method on pipeline-train (LoRA over a forced 2-stage plan). The held-out
// loss of the written result, evaluated by pac-run, equals Trainer::evaluate after the
// same steps (it depends on every trained tensor), and the report says which phases ran.
struct RunCase {
  std::string name, method, cache_dtype;
  int epochs;
  int stages = 2;  // 1: one stage whose group holds both devices (pac-run's "join" path)
  std::string strategy = "";  // default: pac for parallel adapters, ecofl otherwise
};

class ExecRuntimeRunPaths : public ::testing::TestWithParam<RunCase> {};

TEST_P(ExecRuntimeRunPaths, SameHeldOutLossAsTheTrainer) {
  const RunCase& rc = GetParam();
  std::string model = model_path("stories260K/stories260K.bin"), tok_path = model_path("stories260K/tok512.bin");
  if (!std::filesystem::exists(model) || !std::filesystem::exists(tok_path))
    GTEST_SKIP() << "stories260K not found under " << model_dir() << " (set PAC_MODEL_DIR)";
  std::string dir = testing::TempDir() + "/exec_runtime_run_" + rc.name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  Scenario s = scenario_load(kSrc + "/scenarios/local-stories260k.json");
  s.stages = rc.stages;
  s.epochs = rc.epochs;
  s.method.kind = rc.method;
  s.method.cache = !rc.cache_dtype.empty();
  if (s.method.cache) s.method.cache_dtype = rc.cache_dtype;
  s.strategy = !rc.strategy.empty() ? rc.strategy : rc.method == "parallel_adapters" ? "pac" : "ecofl";
  Plan plan = plan_make(s, s.strategy);
  // The run caches only when the plan does: a baseline's plan on a cache scenario has no
  // cache tasks, and then the reference is the trainer without a cache (the cache dtype
  // rounds the taps, so a run that cached anyway would not match it).
  const bool plan_caches = plan_writes_cache(plan);
  EXPECT_EQ(plan_caches, s.method.cache && s.strategy == "pac") << rc.name;
  ASSERT_EQ(plan.phases[0].stages.size(), static_cast<size_t>(rc.stages));
  if (rc.stages == 1) {
    ASSERT_EQ(plan.phases[0].stages[0].devices.size(), 2u) << "a group of both devices";
  }
  plan_save(plan, dir + "/plan.json");
  // Half of the corpus trains (mini-batches of 8, 32 tokens), the other half is held out.
  std::string data = kSrc + "/data/personal/train.txt";
  const int batch = 8, seq = 32, k = 4;
  std::string cmd = pac_run_local(dir, model, tok_path, data,
                                  "--eval-fraction 0.5 --batch-size 8 --seq-len 32 --k 4 --lr 0.005 --seed 9 "
                                  "--timeout-s 30 --out " + dir + "/out.safetensors");
  ASSERT_EQ(run_cmd(cmd), 0) << cmd;

  auto tok = tokenizer_load(tok_path);
  DataOptions d = data_options(*tok, seq);
  TrainOptions o = reference_options(rc.method, batch, seq, 0.005, 9, k, rc.epochs);
  if (plan_caches) {
    o.cache_dir = dir + "/trainer-cache";
    o.cache_dtype = rc.cache_dtype;
  }
  TrainSetup setup;
  setup.load_backbone = [&] { return llama_load(model); };
  data_prepare(data, "", 0.5, *tok, d, o.seed, &setup.train, &setup.heldout);
  json rep = json::parse(std::ifstream(dir + "/report.json"));
  // The cached data-parallel epochs visit the samples by owner (the switch's owners,
  // in the report): the trainer replays that order.
  std::vector<int> owners = rep.value("dp_owners", std::vector<int>());
  if (plan_caches) {
    ASSERT_EQ(owners.size(), setup.train.size());
    // Both devices own half of the samples (shares 1/2 each)...
    EXPECT_EQ(std::count(owners.begin(), owners.end(), 0), static_cast<long>(setup.train.size() / 2));
  }
  Trainer tr(o, setup);
  for (int e = 1; e <= rc.epochs; e++) {
    std::vector<int64_t> order;
    if (e > 1 && plan_caches) {
      order = epoch_order_by_owner(owners, o.seed, e);
      // ...and every full mini-batch of 8 takes 4 rows from each.
      for (size_t b = 0; b + batch <= order.size(); b += batch) {
        int from0 = 0;
        for (int i = 0; i < batch; i++) from0 += owners[order[b + i]] == 0;
        EXPECT_EQ(from0, batch / 2) << "epoch " << e << " batch at " << b;
      }
    }
    tr.train_epoch(e, nullptr, order.empty() ? nullptr : &order);
  }
  double ref_eval = tr.evaluate();

  EXPECT_EQ(rep["method"], rc.method);
  ASSERT_EQ(rep["epochs"].size(), static_cast<size_t>(rc.epochs));
  if (plan_caches) {
    EXPECT_EQ(rep["epochs"][0]["phase"], "pipeline");
    EXPECT_EQ(rep["epochs"][1]["phase"], "data_parallel");
    EXPECT_GT(rep["switch_s"].get<double>(), 0);
  } else {
    EXPECT_EQ(rep["switch_s"].get<double>(), -1);
  }
  EXPECT_NEAR(rep["eval_loss"].get<double>(), ref_eval, 1e-4 * ref_eval) << rc.name;
  // Training moved the result well beyond the tolerance (the comparison is not vacuous).
  EXPECT_GT(rep["eval_loss_before"].get<double>() - ref_eval, 0.05) << rc.name;
  // CPU accounting: every training device used CPU, and only over the training window
  // (from its join: the model load before it is not counted), so at most the 2 cores
  // this host could give one process over total_s, with 0.5 s of slack for the last
  // result's round trip.
  double total = rep["total_s"].get<double>();
  for (const json& d : rep["devices"]) {
    if (!d["used"].get<bool>()) continue;
    ASSERT_TRUE(d.contains("cpu_s")) << rc.name << " " << d["id"];
    EXPECT_GT(d["cpu_s"].get<double>(), 0.0) << rc.name << " " << d["id"];
    EXPECT_LT(d["cpu_s"].get<double>(), 2 * total + 0.5) << rc.name << " " << d["id"];
    // Per step, the CPU since the device's previous result: one entry per step it took
    // part in (every step here), summing to cpu_s less the switch's part (all of it
    // without a switch).
    size_t steps = 0;
    for (const json& e : rep["epochs"]) steps += e["step_s"].size();
    ASSERT_TRUE(d.contains("step_cpu_s")) << rc.name << " " << d["id"];
    ASSERT_EQ(d["step_cpu_s"].size(), steps) << rc.name << " " << d["id"];
    double sum = 0;
    for (const json& x : d["step_cpu_s"]) {
      EXPECT_GE(x.get<double>(), 0.0);
      sum += x.get<double>();
    }
    if (plan_caches) EXPECT_LT(sum, d["cpu_s"].get<double>()) << rc.name << " " << d["id"];
    else EXPECT_NEAR(sum, d["cpu_s"].get<double>(), 1e-6) << rc.name << " " << d["id"];
  }
  EXPECT_GE(rep["coordinator_cpu_s"].get<double>(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Paths, ExecRuntimeRunPaths,
                         ::testing::Values(RunCase{"pa_cache_fp16_switch", "parallel_adapters", "fp16", 2},
                                           RunCase{"lora_pipeline", "lora", "", 1},
                                           RunCase{"pa_group_of_two", "parallel_adapters", "", 1, 1},
                                           RunCase{"pa_cache_scenario_eddl_plan", "parallel_adapters", "fp16", 2, 1, "eddl"}),
                         [](const ::testing::TestParamInfo<RunCase>& i) { return i.param.name; });
