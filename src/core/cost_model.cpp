#include "src/core/cost_model.h"

#include <algorithm>

#include "src/common/error.h"
#include "src/core/profile.h"

namespace pac {

void LayerCost::add(const LayerCost& o, double sign) {
  params += sign * o.params;
  trainable += sign * o.trainable;
  fwd_flops += sign * o.fwd_flops;
  bwd_flops += sign * o.bwd_flops;
  side_fwd_flops += sign * o.side_fwd_flops;
  side_bwd_flops += sign * o.side_bwd_flops;
  side_frozen_params += sign * o.side_frozen_params;
  act_bytes += sign * o.act_bytes;
  side_act_bytes += sign * o.side_act_bytes;
  out_bytes += sign * o.out_bytes;
  grad_bytes += sign * o.grad_bytes;
  tap_bytes += sign * o.tap_bytes;
}

// Shapes of one transformer block, in parameters. Biases and LayerNorm shifts exist
// in BART only; T5 and LLaMA use bias-free linears and scale-only norms.
struct BlockShape {
  double attn = 0;   // one attention module (Q, K, V, O)
  double ffn = 0;    // the feed-forward module
  double norm = 0;   // one norm
};

static BlockShape block_shape(const ModelConfig& m, int d, int ffn, int heads, int kv_heads) {
  BlockShape b;
  double dh = (double)d / heads;
  double kv = kv_heads * dh;
  bool bias = m.family == "bart";
  b.attn = 2.0 * d * d + 2.0 * d * kv + (bias ? 2.0 * d + 2.0 * kv : 0);
  b.ffn = (m.gated_ffn ? 3.0 : 2.0) * d * ffn + (bias ? ffn + d : 0);
  b.norm = bias ? 2.0 * d : d;
  return b;
}

// Embedding-side parameters outside the blocks: token embedding, BART's learned
// positions and embedding norms, T5's relative-position buckets (32 per head in the
// first self-attention of each stack), final norms.
static double model_extra_params(const ModelConfig& m, double* head_out) {
  double d = m.hidden;
  double emb = (double)m.vocab * d;
  double extra = emb;
  int stacks = m.encoder_layers > 0 ? 2 : 1;
  if (m.family == "bart") extra += stacks * ((m.max_seq + 2) * d + 2 * d);
  if (m.family == "t5") extra += stacks * 32.0 * m.heads + stacks * d;
  if (m.family == "llama") extra += d;  // final RMSNorm
  *head_out = m.tied_embeddings ? 0 : emb;
  return extra;
}

double model_param_count(const ModelConfig& m) {
  BlockShape b = block_shape(m, m.hidden, m.ffn, m.heads, m.kv_heads);
  double enc = b.attn + b.ffn + 2 * b.norm;
  double dec = m.encoder_layers > 0 ? 2 * b.attn + b.ffn + 3 * b.norm : enc;
  double head = 0;
  double extra = model_extra_params(m, &head);
  return m.encoder_layers * enc + m.decoder_layers * dec + extra + head;
}

// Activation bytes held for backward, in the fp16 units of Korthikanti et al. 2022
// ("Reducing Activation Recomputation in Large Transformer Models", eq. 1): attention
// 11*t*d + 5*a*t*t_kv, MLP 3*t*d + 4*t*f (6*t*f gated), each norm 2*t*d. Scaled by
// dtype_bytes / 2 at the call site.
static double act_units(double t, double t_kv, double d, double f, double heads, bool gated, int attn_modules,
                        double t_cross) {
  double a = 11 * t * d + 5 * heads * t * t_kv;
  if (attn_modules == 2) a += 11 * t * d + 5 * heads * t * t_cross;
  double mlp = 3 * t * d + (gated ? 6 : 4) * t * f;
  double norms = (attn_modules + 1) * 2 * t * d;
  return a + mlp + norms;
}

ModelCost cost_model_build(const ModelConfig& m, const MethodSpec& method, const DataSpec& data) {
  ModelCost mc;
  mc.weight_bytes = dtype_bytes(method.dtype);
  mc.grad_bytes = mc.weight_bytes;
  mc.optimizer_bytes = 8;
  mc.cache_value_bytes = dtype_bytes(method.cache_dtype);
  mc.side_only_backward = method.kind == "parallel_adapters";
  mc.cache = method.kind == "parallel_adapters" && method.cache;

  const double e = mc.weight_bytes;
  const double d = m.hidden;
  const double f = m.ffn;
  const double heads = m.heads;
  const bool encdec = m.encoder_layers > 0;
  const double t_enc = data.seq_len;
  const double t_dec = encdec ? data.decoder_len() : data.seq_len;
  const int L = m.total_layers();

  BlockShape b = block_shape(m, m.hidden, m.ffn, m.heads, m.kv_heads);
  // Side network: a k-times narrower copy of the block (Ladder Side-Tuning / PAC).
  const double r = std::max(1, m.hidden / std::max(1, method.reduction_k));
  const double fs = std::max(1, m.ffn / std::max(1, method.reduction_k));
  // Structured pruning keeps whole heads: the side block has heads/k heads of the
  // backbone's head size (at least one).
  const int side_heads = std::max(1, m.heads / std::max(1, method.reduction_k));
  BlockShape sb = block_shape(m, (int)r, (int)fs, side_heads, side_heads);
  const double dh = d / heads;
  const double kv = m.kv_heads * dh;

  double head = 0;
  double extra = model_extra_params(m, &head);
  double emb = (double)m.vocab * d;
  // An encoder-decoder task without a target length is sequence classification the
  // BART way (BartForSequenceClassification, the paper's GLUE setting for BART): the
  // decoder reads the input sequence and a new, trained head (dense d x d, tanh,
  // out_proj d x labels) reads the final eos state; the vocabulary projection never
  // runs. Two labels (MRPC, SST-2, QNLI; STS-B's one output differs by d parameters).
  // With a target length (T5's text-to-text labels) the LM head runs on the target tokens.
  const bool cls_head = encdec && data.target_len <= 0;
  const double cls = d * d + d + d * 2 + 2;

  for (int i = 0; i < L; i++) {
    bool dec = i >= m.encoder_layers;
    bool cross = encdec && dec;
    double t = dec ? t_dec : t_enc;
    LayerCost c;
    int attn_modules = cross ? 2 : 1;
    double block = attn_modules * b.attn + b.ffn + (attn_modules + 1) * b.norm;
    c.params = block;
    // Forward FLOPs: 2 per weight per token, cross-attention K/V projections run on
    // the encoder's tokens, attention scores and their product with V 4*t*t_kv*d.
    double proj = 2 * b.attn * t + 2 * b.ffn * t + 4 * t * t * d;
    if (cross) proj += 2 * (2 * d * d) * t + 2 * (d * kv + d * kv) * t_enc + 4 * t * t_enc * d;
    c.fwd_flops = proj;
    c.act_bytes = act_units(t, t, d, f, heads, m.gated_ffn, attn_modules, t_enc) * e / 2;

    // What crosses a stage cut after this layer: the hidden state; in the decoder of
    // an encoder-decoder model also the encoder output (cross-attention needs it).
    double hidden_msg = t * d * e;
    if (encdec && i + 1 >= m.encoder_layers && i + 1 < L) hidden_msg = (i + 1 == m.encoder_layers ? 0 : t_dec * d * e) + t_enc * d * e;
    c.out_bytes = hidden_msg;
    c.grad_bytes = hidden_msg;

    if (i == 0) c.params += extra;
    if (i == L - 1 && cls_head) {
      c.params += cls;
      c.fwd_flops += 2 * cls;   // one token
      c.act_bytes += 2 * d * e;  // the eos state and the tanh output
    } else if (i == L - 1) {
      // Output head on the last layer; a tied head is a copy of layer 0's embedding.
      c.params += m.tied_embeddings ? emb : head;
      if (m.tied_embeddings) mc.tied_head_params = emb;
      c.fwd_flops += 2 * emb * t;
      c.act_bytes += 2 * t * m.vocab * e;  // logits and their softmax gradient
    }

    if (method.kind == "full") {
      c.trainable = c.params;
      c.bwd_flops = 2 * c.fwd_flops;  // activation grads + weight grads
    } else if (method.kind == "lora") {
      double rk = method.lora_rank;
      double per_attn = rk * (d + d) + rk * (d + kv);  // q and v
      double lora = attn_modules * per_attn;
      if (method.lora_mlp) lora += (m.gated_ffn ? 3 : 2) * rk * (d + f);
      c.trainable = lora + (i == L - 1 && cls_head ? cls : 0);
      c.params += lora;
      c.fwd_flops += 2 * lora * t;
      // Frozen backbone: activation grads only (~1x forward), plus the LoRA weights'.
      c.bwd_flops = c.fwd_flops + 2 * lora * t;
      c.act_bytes += lora / (d + d) * t * e;  // the rank-r intermediates
    } else if (method.kind == "adapters") {
      double bn = method.adapter_bottleneck;
      double ad = 2 * (2 * d * bn + bn + d);  // two Houlsby adapters per layer
      c.trainable = ad + (i == L - 1 && cls_head ? cls : 0);
      c.params += ad;
      c.fwd_flops += 2 * (2 * d * bn) * 2 * t;
      c.bwd_flops = c.fwd_flops + 2 * (2 * d * bn) * 2 * t;
      c.act_bytes += 2 * (t * bn * 2 + t * d) * e;
    } else {  // parallel_adapters
      double side = d * r + sb.attn + sb.ffn + 2 * sb.norm;  // down-projection of b_i + narrow block
      if (i == 0) side += d * r;                              // a_0 = Down(b_0)
      if (i == L - 1) side += r * d + 1;                      // Up(a_L) and the gate
      c.trainable = side;
      c.side_fwd_flops = 2 * side * t + 4 * t * t * r;  // scores: 4*t*t*(heads x head size) = 4*t*t*r
      c.side_bwd_flops = 2 * c.side_fwd_flops;
      if (i == L - 1 && cls_head) {
        // The classification head is new, so it trains with the side network (its
        // forward is charged with the backbone's); a cached epoch reruns it.
        c.trainable += cls;
        c.side_bwd_flops += 4 * cls;
        mc.cached_head_flops = 2 * cls;
      } else if (i == L - 1) {
        // The loss flows back through the frozen head into Up(a_L): activation grads
        // only; a cached epoch also reruns the head's forward.
        c.side_bwd_flops += 2 * emb * t;
        c.side_frozen_params = emb;
        mc.cached_head_flops = 2 * emb * t;
      }
      c.bwd_flops = 0;
      // Held for backward: b_i (input of the side down-projection) and the side block's
      // own activations; nothing of the backbone.
      c.side_act_bytes = t * d * e + act_units(t, t, r, fs, side_heads, m.gated_ffn, 1, 0) * e / 2;
      if (i == L - 1) c.side_act_bytes += cls_head ? 2 * d * e : 2 * t * m.vocab * e;
      c.act_bytes = c.side_act_bytes;
      c.out_bytes += t * r * e;  // the side state a_i travels with b_i
      c.grad_bytes = t * r * e;  // only the side state's gradient goes back
      c.tap_bytes = t * d * mc.cache_value_bytes * (i == 0 ? 2 : 1);
    }
    mc.layers.push_back(c);
  }
  mc.total_params = model_param_count(m);
  mc.prefix.assign(L + 1, LayerCost());
  for (int i = 0; i < L; i++) {
    mc.prefix[i + 1] = mc.prefix[i];
    mc.prefix[i + 1].add(mc.layers[i]);
    mc.total_trainable += mc.layers[i].trainable;
  }
  return mc;
}

LayerCost cost_range(const ModelCost& mc, int b, int e) {
  LayerCost c = mc.prefix[e];
  c.add(mc.prefix[b], -1);
  return c;
}

StageMemory stage_memory(const ModelCost& mc, int b, int e, double held_samples, double micro_samples) {
  LayerCost c = cost_range(mc, b, e);
  double params = c.params;
  if (b == 0 && e == mc.num_layers()) params -= mc.tied_head_params;  // one copy when tied
  StageMemory m;
  m.weights = params * mc.weight_bytes;
  m.grads = c.trainable * mc.grad_bytes;
  m.optimizer = c.trainable * mc.optimizer_bytes;
  m.activations = held_samples * c.act_bytes;
  // Messages in and out and one micro-batch of cache writes being flushed.
  m.buffers = micro_samples * (c.out_bytes + c.grad_bytes + c.tap_bytes);
  return m;
}

StageMemory cached_memory(const ModelCost& mc, double samples) {
  const LayerCost& c = mc.prefix.back();
  StageMemory m;
  m.weights = (c.trainable + c.side_frozen_params) * mc.weight_bytes;
  m.grads = c.trainable * mc.grad_bytes;
  m.optimizer = c.trainable * mc.optimizer_bytes;
  m.activations = samples * c.side_act_bytes;
  // Two read buffers (the next step's taps are prefetched while this step computes),
  // plus an upcast copy when the cache is stored narrower than the compute dtype.
  m.buffers = 2 * samples * c.tap_bytes;
  if (mc.cache_value_bytes != mc.weight_bytes) m.buffers += samples * c.tap_bytes / mc.cache_value_bytes * mc.weight_bytes;
  return m;
}

double cache_io_s(const DeviceProfile& p, bool write, double records, double bytes) {
  if (bytes <= 0) return 0;
  return write ? records * p.storage_write_record_s + bytes / p.storage_write_bytes_per_s
               : records * p.storage_read_record_s + bytes / p.storage_read_bytes_per_s;
}

// The runtime's fixed cost of running a forward and a backward task, beyond their
// kernels (a device with no samples runs neither).
static void task_overhead_add(const DeviceProfile& p, double samples, StageTime* t) {
  if (samples <= 0) return;
  t->fwd += p.task_overhead_s;
  t->bwd += p.task_overhead_s;
}

StageTime stage_time(const ModelCost& mc, const DeviceProfile& p, const std::string& dtype, int b, int e,
                     double samples) {
  LayerCost c = cost_range(mc, b, e);
  int mb = (int)(samples + 0.5);
  StageTime t;
  t.fwd = samples * (c.fwd_flops / device_rate(p, dtype, "layer", mb) + c.side_fwd_flops / device_rate(p, dtype, "side", mb));
  t.bwd = samples * (c.bwd_flops / device_rate(p, dtype, "layer_bwd", mb) +
                     c.side_bwd_flops / device_rate(p, dtype, "side_bwd", mb));
  if (mc.cache) t.cache_write = cache_io_s(p, true, samples, samples * c.tap_bytes);
  task_overhead_add(p, samples, &t);
  return t;
}

StageTime cached_time(const ModelCost& mc, const DeviceProfile& p, const std::string& dtype, double samples) {
  const LayerCost& c = mc.prefix.back();
  int mb = (int)(samples + 0.5);
  StageTime t;
  if (profile_has_kind(p, "cached_step")) {
    // Timed whole by pac-profile (the side network, head and loss as the runtime runs
    // them): split between forward and backward in proportion to their FLOPs, so that
    // the two add up to the measured step.
    double f = c.side_fwd_flops + mc.cached_head_flops, b = c.side_bwd_flops;
    double step = samples * (f + b) / device_rate(p, dtype, "cached_step", mb);
    t.fwd = step * f / (f + b);
    t.bwd = step - t.fwd;
  } else {
    t.fwd = samples * (c.side_fwd_flops / device_rate(p, dtype, "side", mb) +
                       mc.cached_head_flops / device_rate(p, dtype, "layer", mb));
    t.bwd = samples * c.side_bwd_flops / device_rate(p, dtype, "side_bwd", mb);
  }
  t.cache_read = cache_io_s(p, false, samples, samples * c.tap_bytes);
  task_overhead_add(p, samples, &t);
  return t;
}

}  // namespace pac
