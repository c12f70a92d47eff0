// Cost model: parameter counts against published totals, FLOPs and memory of a small
// config by hand, and the backward ratios the paper's results rest on.
#include <gtest/gtest.h>

#include <string>

#include "src/common/json_in.h"
#include "src/core/cost_model.h"
#include "src/core/profile.h"

using namespace pac;

static ModelConfig model_load(const std::string& name) {
  return model_config_from_json(JsonIn::load_file(std::string(PAC_SOURCE_DIR) + "/profiles/models/" + name + ".json"));
}

TEST(CostModel, ParameterCountsMatchPublishedTotals) {
  // TinyLlama-1.1B: 22 x (q 2048^2 + k,v 2*2048*256 + o 2048^2 + mlp 3*2048*5632 + 2 norms)
  // + untied embedding and head 2*32000*2048 + final norm = 1,100,048,384 exactly.
  EXPECT_DOUBLE_EQ(model_param_count(model_load("tinyllama-1.1b")), 1100048384.0);
  // T5-Base (HF t5-base): 222,903,552 incl. the shared embedding and relative buckets.
  EXPECT_DOUBLE_EQ(model_param_count(model_load("t5-base")), 222903552.0);
  // BART-Large (HF facebook/bart-large): 406,291,456 (biases, learned positions).
  EXPECT_DOUBLE_EQ(model_param_count(model_load("bart-large")), 406291456.0);
  // Within 1% of the published totals for the rest.
  EXPECT_NEAR(model_param_count(model_load("t5-large")), 737668096.0, 0.01 * 737668096.0);
  EXPECT_NEAR(model_param_count(model_load("llama-2-7b")), 6738415616.0, 0.01 * 6738415616.0);
  EXPECT_NEAR(model_param_count(model_load("llama-3.2-1b")), 1235814400.0, 0.01 * 1235814400.0);
  EXPECT_NEAR(model_param_count(model_load("llama-3.2-3b")), 3212749824.0, 0.01 * 3212749824.0);
  EXPECT_NEAR(model_param_count(model_load("qwen2.5-0.5b")), 494032768.0, 0.01 * 494032768.0);
}

// A tiny LLaMA: d 8, 2 heads (dh 4), 1 kv head, gated FFN 16, vocab 10, untied, 2 layers.
static ModelConfig tiny() {
  ModelConfig m;
  m.name = "tiny";
  m.family = "llama";
  m.decoder_layers = 2;
  m.hidden = 8;
  m.heads = 2;
  m.kv_heads = 1;
  m.ffn = 16;
  m.vocab = 10;
  m.max_seq = 16;
  m.tied_embeddings = false;
  m.gated_ffn = true;
  return m;
}

TEST(CostModel, SmallConfigByHand) {
  ModelConfig m = tiny();
  // Block: attention 2*8*8 + 2*8*4 = 192, FFN 3*8*16 = 384, norms 2*8 = 16 -> 592.
  // Embedding 80 + final norm 8 + head 80: total 2*592 + 168 = 1352.
  EXPECT_DOUBLE_EQ(model_param_count(m), 1352.0);
  MethodSpec full;
  full.kind = "full";
  full.cache = false;
  DataSpec data;
  data.seq_len = 4;
  ModelCost mc = cost_model_build(m, full, data);
  ASSERT_EQ(mc.num_layers(), 2);
  // Forward per sample, t = 4: 2*192*4 + 2*384*4 + 4*t*t*d = 1536 + 3072 + 512 = 5120;
  // the last layer adds the head 2*80*4 = 640.
  EXPECT_DOUBLE_EQ(mc.layers[0].fwd_flops, 5120.0);
  EXPECT_DOUBLE_EQ(mc.layers[1].fwd_flops, 5760.0);
  // Full fine-tuning: backward = 2 x forward.
  EXPECT_DOUBLE_EQ(mc.layers[0].bwd_flops, 10240.0);
  // Layer 0 holds the block and the embedding + final norm: 592 + 88 = 680; layer 1 the block + head.
  EXPECT_DOUBLE_EQ(mc.layers[0].params, 680.0);
  EXPECT_DOUBLE_EQ(mc.layers[1].params, 672.0);
  // Stage boundary: hidden state t*d fp32 = 4*8*4 = 128 bytes each way.
  EXPECT_DOUBLE_EQ(mc.layers[0].out_bytes, 128.0);
  EXPECT_DOUBLE_EQ(mc.layers[0].grad_bytes, 128.0);
  // Activations (Korthikanti, fp16 units then x4/2): attention 11*t*d + 5*a*t*t = 352 + 160,
  // MLP 3*t*d + 6*t*f = 96 + 384, norms 2*2*t*d = 128 -> 1120 units -> 2240 bytes.
  EXPECT_DOUBLE_EQ(mc.layers[0].act_bytes, 2240.0);
  // Memory of a stage holding layer 0 with 3 samples in flight and 1 per message:
  // weights 680*4 + grads 680*4 + AdamW 680*8 = 10880, activations 3*2240 = 6720,
  // buffers 1*(128 + 128) = 256.
  StageMemory sm = stage_memory(mc, 0, 1, 3, 1);
  EXPECT_DOUBLE_EQ(sm.weights + sm.grads + sm.optimizer, 10880.0);
  EXPECT_DOUBLE_EQ(sm.activations, 6720.0);
  EXPECT_DOUBLE_EQ(sm.total(), 10880.0 + 6720.0 + 256.0);
}

TEST(CostModel, LoraTrainsFewParametersButBackpropagatesThroughTheBackbone) {
  ModelConfig m = tiny();
  MethodSpec lora;
  lora.kind = "lora";
  lora.cache = false;
  lora.lora_rank = 2;
  DataSpec data;
  data.seq_len = 4;
  ModelCost mc = cost_model_build(m, lora, data);
  // LoRA on q (8x8) and v (8x4), rank 2: 2*(8+8) + 2*(8+4) = 56 per layer.
  EXPECT_DOUBLE_EQ(mc.layers[0].trainable, 56.0);
  // Forward: 5120 + 2*56*4 = 5568; backward: activation grads (1x forward) + LoRA weight grads 448.
  EXPECT_DOUBLE_EQ(mc.layers[0].fwd_flops, 5568.0);
  EXPECT_DOUBLE_EQ(mc.layers[0].bwd_flops, 5568.0 + 448.0);
}

TEST(CostModel, BackwardSavingsOnT5BaseFollowThePaper) {
  ModelConfig m = model_load("t5-base");
  DataSpec data;
  data.seq_len = 128;
  data.target_len = 8;
  auto total_bwd = [&](const std::string& kind) {
    MethodSpec ms;
    ms.kind = kind;
    ms.cache = kind == "parallel_adapters";
    ModelCost mc = cost_model_build(m, ms, data);
    const LayerCost& all = mc.prefix.back();
    return all.bwd_flops + all.side_bwd_flops;
  };
  double full = total_bwd("full"), lora = total_bwd("lora"), adapters = total_bwd("adapters"),
         pa = total_bwd("parallel_adapters");
  // Paper: LoRA/Adapters save ~49% of the backward, Parallel Adapters ~92%.
  EXPECT_NEAR(1 - lora / full, 0.49, 0.03);
  EXPECT_NEAR(1 - adapters / full, 0.49, 0.03);
  EXPECT_GT(1 - pa / full, 0.90);
}

TEST(CostModel, ParallelAdaptersHoldFarLessActivationMemory) {
  ModelConfig m = model_load("t5-base");
  DataSpec data;
  data.seq_len = 128;
  MethodSpec full;
  full.kind = "full";
  full.cache = false;
  MethodSpec pa;
  ModelCost a = cost_model_build(m, full, data), b = cost_model_build(m, pa, data);
  // Paper: ~59% less activation memory; our estimate saves more (only b_i and the side net are kept).
  EXPECT_LT(b.prefix.back().act_bytes, 0.41 * a.prefix.back().act_bytes);
  // The cache holds b_0..b_L: (L+1) * seq * hidden values per sample (fp16 by default).
  EXPECT_DOUBLE_EQ(b.prefix.back().tap_bytes, 25.0 * 128 * 768 * 2);
}

TEST(CostModel, CalibratedRatesOverrideTheDtypeRate) {
  DeviceProfile p;
  p.eff_flops["fp32"] = 1e11;
  p.eff_flops_by_kind["side"] = 2e10;
  p.eff_flops_by_kind["layer@4"] = 3e11;
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 4), 3e11);
  // Another size than the one timed: that size's rate (the nearest timed one).
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 2), 3e11);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 16), 3e11);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp16", "side", 2), 2e10);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp16", "layer_xyz", 1), 1e11);  // nothing timed, no fp16 entry: fp32's
  // Backward rates fall back to the forward kind's chain unless calibrated.
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer_bwd", 4), 3e11);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "side_bwd", 4), 2e10);
  p.eff_flops_by_kind["side_bwd"] = 1e10;
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "side_bwd", 4), 1e10);
  // Between two timed sizes the time per FLOP is interpolated linearly in the size:
  // layer@4 = 3e11, layer@8 = 1e11; at 6 (halfway) 1 / (0.5 / 3e11 + 0.5 / 1e11) =
  // 1.5e11; at 5 (a quarter) 1 / (0.75 / 3e11 + 0.25 / 1e11) = 2e11.
  p.eff_flops_by_kind["layer@8"] = 1e11;
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 6), 1.5e11);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 5), 2e11);
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 12), 1e11);  // past the largest: its rate
  // The plain key is not an @-size: "layer@8" and "layer" coexist, the sizes win.
  p.eff_flops_by_kind["layer"] = 7e11;
  EXPECT_DOUBLE_EQ(device_rate(p, "fp32", "layer", 6), 1.5e11);
}

// A calibrated task_overhead_s is paid once by each forward and each backward task, in
// the pipeline (stage_time) and in cached epochs (cached_time, with or without a timed
// cached_step), whatever the sample count; a device without samples runs no task.
TEST(CostModel, TaskOverheadIsPaidOncePerForwardAndBackward) {
  ModelConfig m = tiny();
  MethodSpec pa;  // parallel adapters with the cache
  DataSpec data;
  data.seq_len = 4;
  ModelCost mc = cost_model_build(m, pa, data);
  DeviceProfile p;
  p.eff_flops["fp32"] = 1e9;
  p.storage_read_bytes_per_s = p.storage_write_bytes_per_s = 1e8;
  for (bool timed_step : {false, true}) {
    if (timed_step) p.eff_flops_by_kind["cached_step"] = 5e8;
    for (double samples : {1.0, 4.0}) {
      p.task_overhead_s = 0;
      StageTime a = stage_time(mc, p, "fp32", 0, 2, samples), ca = cached_time(mc, p, "fp32", samples);
      p.task_overhead_s = 0.004;
      StageTime b = stage_time(mc, p, "fp32", 0, 2, samples), cb = cached_time(mc, p, "fp32", samples);
      EXPECT_NEAR(b.fwd, a.fwd + 0.004, 1e-15);
      EXPECT_NEAR(b.bwd, a.bwd + 0.004, 1e-15);
      EXPECT_DOUBLE_EQ(b.cache_write, a.cache_write);  // storage is not a compute task
      EXPECT_NEAR(cb.fwd, ca.fwd + 0.004, 1e-15);
      EXPECT_NEAR(cb.bwd, ca.bwd + 0.004, 1e-15);
      EXPECT_DOUBLE_EQ(cb.cache_read, ca.cache_read);
    }
  }
  EXPECT_DOUBLE_EQ(stage_time(mc, p, "fp32", 0, 2, 0).total(), 0.0);
}

TEST(CostModel, CacheRecordCostIsPaidPerSample) {
  ModelConfig m = tiny();
  MethodSpec pa;
  DataSpec data;
  data.seq_len = 4;
  ModelCost mc = cost_model_build(m, pa, data);
  DeviceProfile p;
  p.eff_flops["fp32"] = 1e9;
  p.storage_write_bytes_per_s = 1e8;
  p.storage_read_bytes_per_s = 4e8;
  p.storage_write_record_s = 0.002;
  p.storage_read_record_s = 0.0005;
  const double stage_tap = cost_range(mc, 0, 2).tap_bytes, all_tap = mc.prefix.back().tap_bytes;
  for (double samples : {1.0, 3.0}) {
    // n records of n samples' taps: n x (record cost + bytes / rate).
    EXPECT_NEAR(stage_time(mc, p, "fp32", 0, 2, samples).cache_write, samples * (0.002 + stage_tap / 1e8), 1e-15);
    EXPECT_NEAR(cached_time(mc, p, "fp32", samples).cache_read, samples * (0.0005 + all_tap / 4e8), 1e-15);
  }
  EXPECT_NEAR(cache_io_s(p, true, 2, 3e6), 2 * 0.002 + 0.03, 1e-15);
  EXPECT_NEAR(cache_io_s(p, false, 2, 4e6), 2 * 0.0005 + 0.01, 1e-15);
  EXPECT_EQ(cache_io_s(p, true, 0, 0), 0);  // nothing to write costs nothing
}

TEST(CostModel, EncoderDecoderWithoutTargetIsSequenceClassification) {
  // BART-Large on GLUE (no target_len): the decoder runs on the 128 input tokens and the
  // last layer adds a classification head (dense d x d + bias, out_proj d x 2 + bias) on
  // one token: 2 x (1024^2 + 3 x 1024 + 2) FLOPs over the previous decoder layer, and no
  // vocabulary projection. T5 with an 8-token target keeps the tied LM head on the
  // target: 2 x 32128 x 768 x 8 FLOPs over the previous decoder layer.
  MethodSpec lora;
  lora.kind = "lora";
  DataSpec data;
  data.seq_len = 128;
  ModelCost bart = cost_model_build(model_load("bart-large"), lora, data);
  int L = bart.num_layers();
  double d = 1024, cls = d * d + 3 * d + 2;
  EXPECT_NEAR(bart.layers[L - 1].fwd_flops - bart.layers[L - 2].fwd_flops, 2 * cls, 1e-9 * bart.layers[L - 1].fwd_flops);
  // The head is new, so it trains with every method: LoRA's trainables there gain it.
  EXPECT_NEAR(bart.layers[L - 1].trainable - bart.layers[L - 2].trainable, cls, 1e-6);
  data.target_len = 8;
  ModelCost t5 = cost_model_build(model_load("t5-base"), lora, data);
  L = t5.num_layers();
  EXPECT_NEAR(t5.layers[L - 1].fwd_flops - t5.layers[L - 2].fwd_flops, 2.0 * 32128 * 768 * 8,
              1e-9 * t5.layers[L - 1].fwd_flops);
}
