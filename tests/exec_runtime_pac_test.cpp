// THE correctness test of the runtime (issue 5): distributed Parallel Adapters training
// over 1, 2 and 4 workers and several stage/group shapes gives the same side-network
// weights as the single-device trainer (src/llm/trainer.h) on the same data order,
// within 1e-4 relative (fp32 summation order is the only difference). Workers run
// in-process on loopback; each case takes well under a few seconds.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "exec/pac_driver.h"
#include "src/llm/safetensors.h"
#include "src/llm/trainer.h"
#include "tests/exec_runtime_util.h"

using namespace pac;

struct Shape {
  std::string name;
  int workers;
  int micro_batches;
  std::vector<StagePlan> stages;
};

static const int kSteps = 3, kBatch = 6, kSeq = 8, kK = 4;
static const uint64_t kSeed = 7;
static const double kLr = 5e-3, kWd = 0.01;

// The executor settings every case shares (the trainer reference uses the same values).
static json base_settings() {
  return {{"model", runtime_config_json(runtime_tiny_config())}, {"seed", kSeed}, {"side_init", "random"}, {"reduction_k", kK},
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
  Llama m(runtime_tiny_config());
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

class ExecRuntimePac : public ::testing::TestWithParam<Shape> {};

TEST_P(ExecRuntimePac, SameSideWeightsAsSingleDevice) {
  const Shape& shape = GetParam();
  at::set_num_threads(1);
  std::vector<Example> ex = runtime_examples(kSteps * kBatch, kSeq, runtime_tiny_config().vocab_size, 11);
  std::vector<double> ref_loss;
  std::map<std::string, torch::Tensor> ref = reference(ex, &ref_loss);

  Plan plan = runtime_plan(runtime_tiny_config().n_layers, shape.workers, shape.micro_batches, shape.stages);
  std::vector<Assignment> as = assignments_make(plan, 0);

  InProcCluster cluster(shape.workers);
  Coordinator& c = *cluster.coord;
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
  SideNetwork init(side_config_make(runtime_tiny_config(), kK));
  init->init_random(kSeed);
  std::map<std::string, torch::Tensor> init_state = init->state();
  double moved = 0;
  for (auto& kv : ref) {
    ASSERT_TRUE(got.count(kv.first)) << shape.name << ": " << kv.first << " missing";
    EXPECT_LE(runtime_rel_diff(got[kv.first], kv.second), 1e-4) << shape.name << ": " << kv.first;
    if (kv.first != "gate") moved = std::max(moved, runtime_rel_diff(kv.second, init_state[kv.first]));
  }
  // Training moved the weights far beyond the tolerance (the comparison is not vacuous).
  EXPECT_GT(moved, 1e-2) << shape.name;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ExecRuntimePac,
    ::testing::Values(
        Shape{"one", 1, 2, {runtime_stage(0, 4, {0}, {1.0})}},
        Shape{"two_stages", 2, 3, {runtime_stage(0, 2, {0}, {1.0}), runtime_stage(2, 4, {1}, {1.0})}},
        Shape{"two_group", 2, 1, {runtime_stage(0, 4, {0, 1}, {0.5, 0.5})}},
        Shape{"four_2x2", 4, 2, {runtime_stage(0, 1, {0, 1}, {0.25, 0.75}), runtime_stage(1, 4, {2, 3}, {0.5, 0.5})}},
        Shape{"four_stages", 4, 3,
              {runtime_stage(0, 1, {0}, {1.0}), runtime_stage(1, 2, {1}, {1.0}), runtime_stage(2, 3, {2}, {1.0}), runtime_stage(3, 4, {3}, {1.0})}},
        Shape{"four_1_3", 4, 2, {runtime_stage(0, 3, {0}, {1.0}), runtime_stage(3, 4, {1, 2, 3}, {0.2, 0.3, 0.5})}}),
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
  std::vector<Example> ex = runtime_examples(kSteps * kBatch, kSeq, runtime_tiny_config().vocab_size, 13);
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

  Plan plan = runtime_plan(runtime_tiny_config().n_layers, shape.workers, shape.micro_batches, shape.stages);
  plan.phases[0].kind = "pipeline";
  Phase p2;
  p2.kind = "data_parallel";
  p2.epoch_first = 2;
  p2.epoch_last = kEpochs;
  p2.stages = {runtime_stage(0, runtime_tiny_config().n_layers, shape.dp_devices, shape.dp_shares)};
  plan.phases.push_back(p2);
  std::vector<Assignment> as1 = assignments_make(plan, 0), as2 = assignments_make(plan, 1);

  InProcCluster cluster(shape.workers);
  Coordinator& c = *cluster.coord;
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
  int64_t side_params = 0;
  for (auto& kv : ref) side_params += kv.second.numel();
  int written = 0;
  for (auto& j : sw.results) written += j.value("records_written", 0);
  EXPECT_EQ(written, static_cast<int>(ex.size())) << "every sample lands in exactly one phase-2 cache";
  // Side state moves only to data-parallel devices outside the stage's group: the first
  // device of stage j sends each of its stage's tensors once to every such device, and
  // nobody else sends any (a group's members hold the same tensors and moments). A
  // stage's tensors: down0.* on the first stage, blocks.<b>.* for its layers b, and the
  // head's (norm, up, gate) on the last.
  for (size_t i = 0; i < sw.results.size(); i++) {
    const Assignment& a = as1[sw.workers[i]];
    int want = 0;
    if (a.stage >= 0 && a.group_rank == 0) {
      int n_stage = 0;
      for (auto& kv : ref) {
        const std::string& n = kv.first;
        if (n.rfind("down0.", 0) == 0) n_stage += a.has_embedding();
        else if (n.rfind("blocks.", 0) == 0) n_stage += std::stoi(n.substr(7)) >= a.layer_begin() && std::stoi(n.substr(7)) < a.layer_end();
        else n_stage += a.has_head();
      }
      int outside = 0;
      for (int d : shape.dp_devices)
        outside += std::find(a.my_stage().devices.begin(), a.my_stage().devices.end(), d) == a.my_stage().devices.end();
      want = n_stage * outside;
    }
    EXPECT_EQ(sw.results[i].value("tensors_sent", -1), want) << shape.name << " device " << a.device_id;
  }

  // Phase 2 with prefetch: every step names the next mini-batch (across the epoch
  // boundary too), except that the second one names a wrong one (the fourth), so the
  // third step must find the prefetched rows unusable and read its own. A device uses
  // a prefetch exactly when the previous step named this batch and it owns rows of it;
  // the loss and the final side network stay the trainer's either way.
  std::vector<std::vector<const Example*>> p2_batches;
  for (int e = 2; e <= kEpochs; e++)
    for (auto& b : epoch_batches(ex, e)) p2_batches.push_back(b);
  std::vector<const Example*> named_before;  // what the previous step named as next
  int n_prefetched = 0;
  for (size_t bi = 0; bi < p2_batches.size(); bi++) {
    const std::vector<const Example*>& b = p2_batches[bi];
    std::vector<const Example*> next;
    if (bi + 1 < p2_batches.size()) next = p2_batches[bi == 1 && p2_batches.size() > 3 ? 3 : bi + 1];
    {
      PacStepResult r = pac_train_step(c, as2, step++, kLr, b, Millis(30000), false, &next);
      EXPECT_NEAR(r.loss, ref_loss[li], 1e-5 * std::fabs(ref_loss[li])) << shape.name << " step " << li;
      for (const json& j : r.results) {
        bool want = named_before == b && j.value("rows", 0) > 0;
        EXPECT_EQ(j.value("prefetched", !want), want) << shape.name << " phase-2 step " << bi << " " << j.dump();
        n_prefetched += j.value("prefetched", false) ? 1 : 0;
      }
      named_before = next;
      // Phase 2 runs on the data-parallel devices only, and none of them runs a backbone.
      EXPECT_EQ(r.results.size(), shape.dp_devices.size());
      // Its only traffic is one all-reduce of the whole side network's f32 gradients:
      // ring volume 2 (G-1)/G x 4 x params to the ring successor (rank + 1 mod G).
      for (size_t i = 0; i < r.results.size(); i++) {
        const Assignment& a = as2[r.workers[i]];
        int G = a.group_size();
        std::map<std::string, double> want, got;
        if (G > 1) want[a.my_stage().device_ids[(a.group_rank + 1) % G]] = 2.0 * (G - 1) / G * 4.0 * side_params;
        for (auto& kv : r.results[i]["bytes_to"].items()) got[kv.key()] = kv.value().get<double>();
        EXPECT_EQ(got, want) << shape.name << " step " << li << " device " << a.device_id;
      }
      li++;
    }
  }
  EXPECT_GE(n_prefetched, static_cast<int>(p2_batches.size()) - 3) << shape.name;
  std::map<std::string, torch::Tensor> got;
  for (const std::string& p : pac_save_parts(c, as2, dir, Millis(20000)))
    for (auto& kv : safetensors_read(p).tensors) got[kv.first] = kv.second;
  if (shape.dp_devices.size() == 1) {
    // A record that goes bad is reported by the step that needs it, also when the
    // prefetch read it: one more step names a batch whose first record was corrupted
    // before, and the step of that batch fails naming the sample (the worker lives on).
    const std::vector<const Example*>& bad = p2_batches[0];
    std::string rec = dir + "/workers/" + as2[shape.dp_devices[0]].device_id + "/dp/dp-" +
                      std::to_string(bad[0]->id) + ".pacc";
    ASSERT_TRUE(std::filesystem::exists(rec)) << rec;
    {
      std::fstream f(rec, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(-1, std::ios::end);
      char last = static_cast<char>(f.get());
      f.seekp(-1, std::ios::end);
      f.put(static_cast<char>(last ^ 0x5a));
    }
    pac_train_step(c, as2, step++, kLr, p2_batches[1], Millis(30000), false, &bad);
    std::string err;
    try {
      pac_train_step(c, as2, step++, kLr, bad, Millis(30000));
    } catch (const std::exception& e) {
      err = e.what();
    }
    EXPECT_NE(err.find("sample " + std::to_string(bad[0]->id)), std::string::npos) << err;
    EXPECT_NE(err.find("corrupt"), std::string::npos) << err;
  }
  c.shutdown(false);

  ASSERT_EQ(got.size(), ref.size()) << shape.name;
  for (auto& kv : ref) {
    ASSERT_TRUE(got.count(kv.first)) << shape.name << ": " << kv.first << " missing";
    EXPECT_LE(runtime_rel_diff(got[kv.first], kv.second), 1e-4) << shape.name << ": " << kv.first;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ExecRuntimePacSwitch,
    ::testing::Values(
        SwitchShape{"one", 1, 2, {runtime_stage(0, 4, {0}, {1.0})}, {0}, {1.0}, "fp32"},
        // One stage of the whole model on a group: each device's p1 records are whole and
        // move into its phase-2 cache unchanged (renamed, not re-written).
        SwitchShape{"group_of_two_dp2", 2, 2, {runtime_stage(0, 4, {0, 1}, {0.5, 0.5})}, {0, 1}, {0.5, 0.5}, "fp32"},
        SwitchShape{"two_stages_dp2", 2, 3, {runtime_stage(0, 2, {0}, {1.0}), runtime_stage(2, 4, {1}, {1.0})}, {0, 1}, {0.5, 0.5},
                    "fp32"},
        SwitchShape{"three_2_1_dp3_fp16", 3, 2, {runtime_stage(0, 1, {0, 1}, {0.5, 0.5}), runtime_stage(1, 4, {2}, {1.0})}, {0, 1, 2},
                    {0.5, 0.25, 0.25}, "fp16"},
        SwitchShape{"four_2x2_dp2", 4, 2, {runtime_stage(0, 3, {0, 1}, {0.25, 0.75}), runtime_stage(3, 4, {2, 3}, {0.5, 0.5})},
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
