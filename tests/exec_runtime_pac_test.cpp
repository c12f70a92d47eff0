// THE correctness test of the runtime (issue 5): distributed Parallel Adapters training
// over 1, 2 and 4 workers and several stage/group shapes gives the same side-network
// weights as the single-device trainer (src/llm/trainer.h) on the same data order,
// within 1e-4 relative (fp32 summation order is the only difference). Workers run
// in-process on loopback; each case takes well under a few seconds.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <thread>

#include "exec/pac_driver.h"
#include "exec/executors.h"
#include "exec/worker.h"
#include "src/llm/safetensors.h"
#include "src/llm/trainer.h"

using namespace pac;

static const ClusterKey kKey{"runtime-test-cluster-key-0123456789", "test"};

struct InProcWorker {
  std::unique_ptr<Worker> worker;
  std::thread thread;
  explicit InProcWorker(const std::string& id) {
    WorkerOptions o;
    o.device_id = id;
    o.listen = "127.0.0.1:0";
    o.io_timeout = Millis(5000);
    o.peer_timeout = Millis(20000);
    o.log = [](const std::string&) {};
    worker = std::make_unique<Worker>(o, kKey, executor_create_runtime);
    worker->start();
    thread = std::thread([this] { worker->serve(); });
  }
  ~InProcWorker() {
    worker->stop();
    thread.join();
  }
};

static LlamaConfig tiny_config() {
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 128;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 96;
  c.max_seq_len = 16;
  return c;
}

static json config_json(const LlamaConfig& c) {
  return {{"dim", c.dim},           {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},   {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len}};
}

// Random examples with a few masked-out targets, so the loss normaliser N matters.
static std::vector<Example> make_examples(int n, int T, int vocab, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<Example> ex(n);
  for (int i = 0; i < n; i++) {
    ex[i].id = i;
    for (int t = 0; t <= T; t++) ex[i].tokens.push_back(static_cast<int32_t>(rng() % vocab));
    for (int t = 0; t < T; t++) ex[i].mask.push_back((rng() % 5) == 0 ? 0 : 1);
  }
  return ex;
}

struct Shape {
  std::string name;
  int workers;
  int micro_batches;
  std::vector<StagePlan> stages;
};

static StagePlan stage(int lb, int le, std::vector<int> devs, std::vector<double> shares) {
  StagePlan s;
  s.layer_begin = lb;
  s.layer_end = le;
  s.devices = std::move(devs);
  s.shares = std::move(shares);
  return s;
}

static const int kSteps = 3, kBatch = 6, kSeq = 8, kK = 4;
static const uint64_t kSeed = 7;
static const double kLr = 5e-3, kWd = 0.01;

// n in-process workers w0..w{n-1} and a coordinator connected to them.
struct InProcCluster {
  std::vector<std::unique_ptr<InProcWorker>> workers;
  std::unique_ptr<Coordinator> c;
  explicit InProcCluster(int n) {
    std::vector<WorkerAddress> addrs;
    for (int d = 0; d < n; d++) {
      workers.push_back(std::make_unique<InProcWorker>("w" + std::to_string(d)));
      addrs.push_back({"w" + std::to_string(d), workers.back()->worker->address()});
    }
    c = std::make_unique<Coordinator>(addrs, kKey, CoordinatorOptions{"coord", Millis(20000), Millis(500), 20});
    c->connect_all();
  }
};

// A plan skeleton over devices w0..w{n-1} of the tiny model (phases added by the caller).
static Plan plan_of_workers(int n) {
  Plan plan;
  plan.scenario.model.decoder_layers = tiny_config().n_layers;
  for (int d = 0; d < n; d++) {
    DeviceSpec ds;
    ds.id = "w" + std::to_string(d);
    plan.scenario.devices.push_back(ds);
  }
  return plan;
}

// The executor settings every case shares (the trainer reference uses the same values).
static json base_settings() {
  return {{"model", config_json(tiny_config())}, {"seed", kSeed}, {"side_init", "random"}, {"reduction_k", kK},
          {"lr", kLr}, {"weight_decay", kWd}, {"timeout_ms", 20000}};
}

static TrainOptions reference_options(int epochs) {
  TrainOptions o;
  o.method = "parallel_adapters";
  o.batch_size = kBatch;
  o.seq_len = kSeq;
  o.lr = kLr;
  o.weight_decay = kWd;
  o.seed = kSeed;
  o.reduction_k = kK;
  o.side_random_init = true;
  o.epochs = epochs;
  o.quiet = true;
  return o;
}

static Llama tiny_backbone() {
  Llama m(tiny_config());
  m->init_random(kSeed);
  return m;
}

// Single-device reference: the trainer's own train_step on the same batches.
static std::map<std::string, torch::Tensor> reference(const std::vector<Example>& ex, std::vector<double>* losses) {
  TrainOptions o = reference_options(1);
  TrainSetup setup;
  setup.load_backbone = tiny_backbone;
  setup.train = ex;
  Trainer tr(o, setup);
  for (int s = 0; s < kSteps; s++) {
    std::vector<const Example*> batch;
    for (int i = 0; i < kBatch; i++) batch.push_back(&ex[s * kBatch + i]);
    losses->push_back(tr.train_step(batch, 1).loss);
  }
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : tr.side()->state()) out[kv.first] = kv.second.clone();
  return out;
}

static double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  double nb = b.norm().item<double>();
  return (a - b).norm().item<double>() / std::max(nb, 1e-12);
}

class ExecRuntimePac : public ::testing::TestWithParam<Shape> {};

TEST_P(ExecRuntimePac, SameSideWeightsAsSingleDevice) {
  const Shape& shape = GetParam();
  at::set_num_threads(1);
  std::vector<Example> ex = make_examples(kSteps * kBatch, kSeq, tiny_config().vocab_size, 11);
  std::vector<double> ref_loss;
  std::map<std::string, torch::Tensor> ref = reference(ex, &ref_loss);

  Plan plan = plan_of_workers(shape.workers);
  Phase ph;
  ph.kind = shape.stages.size() > 1 ? "pipeline" : "data_parallel";
  ph.micro_batches = shape.micro_batches;
  ph.stages = shape.stages;
  plan.phases.push_back(ph);
  std::vector<Assignment> as = assignments_make(plan, 0);

  InProcCluster cluster(shape.workers);
  Coordinator& c = *cluster.c;
  json settings = base_settings();
  pac_assign_phase(c, as, settings);
  for (int s = 0; s < kSteps; s++) {
    std::vector<const Example*> batch;
    for (int i = 0; i < kBatch; i++) batch.push_back(&ex[s * kBatch + i]);
    PacStepResult r = pac_train_step(c, as, s, kLr, batch, Millis(30000));
    // The slices' loss parts add up to the trainer's masked-mean loss.
    EXPECT_NEAR(r.loss, ref_loss[s], 1e-5 * std::fabs(ref_loss[s])) << shape.name << " step " << s;
  }
  std::string dir = testing::TempDir() + "/exec_runtime_pac_" + shape.name;
  std::filesystem::create_directories(dir);
  std::map<std::string, torch::Tensor> got;
  for (const std::string& p : pac_save_parts(c, as, dir, Millis(20000)))
    for (auto& kv : safetensors_read(p).tensors) {
      EXPECT_FALSE(got.count(kv.first)) << kv.first << " saved by two stages";
      got[kv.first] = kv.second;
    }
  c.shutdown(false);

  // Every side tensor comes back exactly once and matches the reference.
  ASSERT_EQ(got.size(), ref.size()) << shape.name;
  SideNetwork init(side_config_make(tiny_config(), kK));
  init->init_random(kSeed);
  std::map<std::string, torch::Tensor> init_state = init->state();
  double moved = 0;
  for (auto& kv : ref) {
    ASSERT_TRUE(got.count(kv.first)) << shape.name << ": " << kv.first << " missing";
    EXPECT_LE(rel_diff(got[kv.first], kv.second), 1e-4) << shape.name << ": " << kv.first;
    if (kv.first != "gate") moved = std::max(moved, rel_diff(kv.second, init_state[kv.first]));
  }
  // Training moved the weights far beyond the tolerance (the comparison is not vacuous).
  EXPECT_GT(moved, 1e-2) << shape.name;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ExecRuntimePac,
    ::testing::Values(
        Shape{"one", 1, 2, {stage(0, 4, {0}, {1.0})}},
        Shape{"two_stages", 2, 3, {stage(0, 2, {0}, {1.0}), stage(2, 4, {1}, {1.0})}},
        Shape{"two_group", 2, 1, {stage(0, 4, {0, 1}, {0.5, 0.5})}},
        Shape{"four_2x2", 4, 2, {stage(0, 1, {0, 1}, {0.25, 0.75}), stage(1, 4, {2, 3}, {0.5, 0.5})}},
        Shape{"four_stages", 4, 3,
              {stage(0, 1, {0}, {1.0}), stage(1, 2, {1}, {1.0}), stage(2, 3, {2}, {1.0}), stage(3, 4, {3}, {1.0})}},
        Shape{"four_1_3", 4, 2, {stage(0, 3, {0}, {1.0}), stage(3, 4, {1, 2, 3}, {0.2, 0.3, 0.5})}}),
    [](const ::testing::TestParamInfo<Shape>& i) { return i.param.name; });

// ---- the activation cache, the switch and phase 2 ------------------------------------
//
// Epoch 1 runs the pipeline (every device caches its stage's taps of its rows), the
// switch moves the taps to each sample's owner and the side network with its AdamW
// state to every data-parallel device, and epochs 2-3 run data parallel from the
// cache without the backbone. The single-device trainer with its own activation cache
// on the same batches is the reference: same side weights within 1e-4, same losses.

struct SwitchShape {
  std::string name;
  int workers;
  int micro_batches;
  std::vector<StagePlan> stages;    // phase 1
  std::vector<int> dp_devices;      // phase 2
  std::vector<double> dp_shares;
  std::string cache_dtype;
};

static const int kEpochs = 3;

// The batches of every epoch: epoch e takes the examples in a rotated order, so phase 2
// sees other mini-batch compositions than phase 1 (each device's rows change).
static std::vector<std::vector<const Example*>> epoch_batches(const std::vector<Example>& ex, int e) {
  std::vector<std::vector<const Example*>> out;
  int n = static_cast<int>(ex.size());
  for (int s = 0; s < n / kBatch; s++) {
    std::vector<const Example*> b;
    for (int i = 0; i < kBatch; i++) b.push_back(&ex[(s * kBatch + i + 5 * (e - 1)) * (e == 1 ? 1 : 7) % n]);
    out.push_back(b);
  }
  return out;
}

class ExecRuntimePacSwitch : public ::testing::TestWithParam<SwitchShape> {};

TEST_P(ExecRuntimePacSwitch, CachedPhaseTwoSameAsSingleDevice) {
  const SwitchShape& shape = GetParam();
  at::set_num_threads(1);
  std::vector<Example> ex = make_examples(kSteps * kBatch, kSeq, tiny_config().vocab_size, 13);
  std::string dir = testing::TempDir() + "/exec_runtime_switch_" + shape.name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);

  // Reference: the trainer with an activation cache in the same dtype.
  std::vector<double> ref_loss;
  std::map<std::string, torch::Tensor> ref;
  {
    TrainOptions o = reference_options(kEpochs);
    o.cache_dir = dir + "/trainer-cache";
    o.cache_dtype = shape.cache_dtype;
    TrainSetup setup;
    setup.load_backbone = tiny_backbone;
    setup.train = ex;
    Trainer tr(o, setup);
    for (int e = 1; e <= kEpochs; e++)
      for (auto& b : epoch_batches(ex, e)) ref_loss.push_back(tr.train_step(b, e).loss);
    for (auto& kv : tr.side()->state()) ref[kv.first] = kv.second.clone();
  }

  Plan plan = plan_of_workers(shape.workers);
  Phase p1;
  p1.kind = "pipeline";
  p1.micro_batches = shape.micro_batches;
  p1.stages = shape.stages;
  Phase p2;
  p2.kind = "data_parallel";
  p2.epoch_first = 2;
  p2.epoch_last = kEpochs;
  p2.stages = {stage(0, tiny_config().n_layers, shape.dp_devices, shape.dp_shares)};
  plan.phases = {p1, p2};
  std::vector<Assignment> as1 = assignments_make(plan, 0), as2 = assignments_make(plan, 1);

  InProcCluster cluster(shape.workers);
  Coordinator& c = *cluster.c;
  json settings = base_settings();
  settings["cache"] = true;
  settings["cache_dtype"] = shape.cache_dtype;
  settings["cache_dir"] = dir + "/workers";
  pac_assign_phase(c, as1, settings);  // each worker caches under <cache_dir>/<its id>
  size_t li = 0;
  int step = 0;
  CacheHolders holders;
  for (auto& b : epoch_batches(ex, 1)) {
    PacStepResult r = pac_train_step(c, as1, step++, kLr, b, Millis(30000));
    pac_note_cached(r, &holders);
    EXPECT_NEAR(r.loss, ref_loss[li], 1e-5 * std::fabs(ref_loss[li])) << shape.name << " step " << li;
    li++;
  }
  // Every sample was cached exactly once per stage.
  EXPECT_EQ(holders.size(), ex.size());
  for (auto& kv : holders) EXPECT_EQ(kv.second.size(), shape.stages.size()) << "sample " << kv.first;

  std::vector<const Example*> all;
  for (auto& e : ex) all.push_back(&e);
  SwitchResult sw = pac_switch(c, as1, as2, all, holders, Millis(30000));
  int written = 0;
  for (auto& j : sw.results) written += j.value("records_written", 0);
  EXPECT_EQ(written, static_cast<int>(ex.size())) << "every sample lands in exactly one phase-2 cache";

  for (int e = 2; e <= kEpochs; e++)
    for (auto& b : epoch_batches(ex, e)) {
      PacStepResult r = pac_train_step(c, as2, step++, kLr, b, Millis(30000));
      EXPECT_NEAR(r.loss, ref_loss[li], 1e-5 * std::fabs(ref_loss[li])) << shape.name << " step " << li;
      // Phase 2 runs on the data-parallel devices only, and none of them runs a backbone.
      EXPECT_EQ(r.results.size(), shape.dp_devices.size());
      li++;
    }
  std::map<std::string, torch::Tensor> got;
  for (const std::string& p : pac_save_parts(c, as2, dir, Millis(20000)))
    for (auto& kv : safetensors_read(p).tensors) got[kv.first] = kv.second;
  c.shutdown(false);

  ASSERT_EQ(got.size(), ref.size()) << shape.name;
  for (auto& kv : ref) {
    ASSERT_TRUE(got.count(kv.first)) << shape.name << ": " << kv.first << " missing";
    EXPECT_LE(rel_diff(got[kv.first], kv.second), 1e-4) << shape.name << ": " << kv.first;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ExecRuntimePacSwitch,
    ::testing::Values(
        SwitchShape{"one", 1, 2, {stage(0, 4, {0}, {1.0})}, {0}, {1.0}, "fp32"},
        SwitchShape{"two_stages_dp2", 2, 3, {stage(0, 2, {0}, {1.0}), stage(2, 4, {1}, {1.0})}, {0, 1}, {0.5, 0.5},
                    "fp32"},
        SwitchShape{"three_2_1_dp3_fp16", 3, 2, {stage(0, 1, {0, 1}, {0.5, 0.5}), stage(1, 4, {2}, {1.0})}, {0, 1, 2},
                    {0.5, 0.25, 0.25}, "fp16"},
        SwitchShape{"four_2x2_dp2", 4, 2, {stage(0, 3, {0, 1}, {0.25, 0.75}), stage(3, 4, {2, 3}, {0.5, 0.5})},
                    {1, 3}, {0.5, 0.5}, "fp32"}),
    [](const ::testing::TestParamInfo<SwitchShape>& i) { return i.param.name; });

// The owner rule keeps samples where their taps already are, within each rank's share.
TEST(ExecSwitchOwners, KeepsHeldSamplesWithinShares) {
  // 6 samples; device 0 holds 2 taps of samples 0-2, device 1 holds 3 taps of 3-5, and
  // device 2 holds 3 taps of all six. DP over devices {0, 2} with shares 1/2, 1/2:
  // device 2 (more taps) goes first and takes the first three it holds (0, 1, 2);
  // device 0 then holds none of the rest and gets 3, 4, 5 by capacity.
  std::vector<int64_t> s = {0, 1, 2, 3, 4, 5};
  CacheHolders h = {{0, {0, 2}}, {1, {0, 2}}, {2, {0, 2}}, {3, {1, 2}}, {4, {1, 2}}, {5, {1, 2}}};
  std::vector<int> o = switch_owners(s, h, {0, 2}, {0.5, 0.5}, {2, 3, 3});
  EXPECT_EQ(o, (std::vector<int>{1, 1, 1, 0, 0, 0}));
  // DP over {1, 0} with shares 1/2, 1/2: device 1 (3 taps) keeps 3-5, device 0 keeps 0-2.
  o = switch_owners(s, h, {1, 0}, {0.5, 0.5}, {2, 3, 3});
  EXPECT_EQ(o, (std::vector<int>{1, 1, 1, 0, 0, 0}));
  // Shares 2/3, 1/3 over {1, 0}: device 1 keeps its 3 and takes one more by capacity.
  o = switch_owners(s, h, {1, 0}, {2.0 / 3, 1.0 / 3}, {2, 3, 3});
  EXPECT_EQ(std::count(o.begin(), o.end(), 0), 4);
  EXPECT_EQ(o[3], 0);
  EXPECT_EQ(o[4], 0);
  EXPECT_EQ(o[5], 0);
}
