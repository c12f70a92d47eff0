#include "src/llm/checkpoint.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/safetensors.h"

namespace pac {

namespace fs = std::filesystem;

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

CheckpointFormat checkpoint_format_of(const std::string& path) {
  if (ends_with(path, ".bin")) return CheckpointFormat::Llama2c;
  return CheckpointFormat::HuggingFace;
}

// ---------------------------------------------------------------- llama2.c .bin

// One tensor of the .bin layout: our name and its shape. The file stores each kind for
// all layers before the next kind (all attention norms, then all wq, ...).
struct BinTensor {
  std::string name;
  std::vector<int64_t> shape;
};

static std::vector<BinTensor> bin_layout(const LlamaConfig& c) {
  const int64_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, v = c.vocab_size;
  std::vector<BinTensor> out;
  out.push_back({"tok_embeddings.weight", {v, d}});
  struct Kind {
    const char* name;
    std::vector<int64_t> shape;
  };
  const Kind kinds[] = {{"attention_norm.weight", {d}}, {"wq.weight", {d, d}},  {"wk.weight", {kv, d}},
                        {"wv.weight", {kv, d}},         {"wo.weight", {d, d}},  {"ffn_norm.weight", {d}},
                        {"w1.weight", {h, d}},          {"w2.weight", {d, h}},  {"w3.weight", {h, d}}};
  for (auto& k : kinds)
    for (int l = 0; l < c.n_layers; l++) out.push_back({"layers." + std::to_string(l) + "." + k.name, k.shape});
  out.push_back({"norm.weight", {d}});
  // Legacy RoPE tables (run.c skips them); "" marks data that is not a weight.
  out.push_back({"", {c.max_seq_len, c.head_dim() / 2}});
  out.push_back({"", {c.max_seq_len, c.head_dim() / 2}});
  if (!c.tied_classifier) out.push_back({"output.weight", {v, d}});
  return out;
}

static int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Checkpoint checkpoint_read_bin(const std::string& path, const LlamaParts& parts) {
  if (!file_exists(path)) throw_input(path, "", "checkpoint not found");
  // Read by seeking, not into one buffer: a stage reads only its layers, and even a whole
  // read then holds the weights once (in the tensors), not twice.
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, "", "cannot open for reading");
  const int64_t file_size = static_cast<int64_t>(fs::file_size(path));
  if (file_size < 28)
    throw_input(path, "", "not a llama2.c checkpoint: " + std::to_string(file_size) + " bytes, the header alone is 28");
  int32_t hdr[7];
  in.read(reinterpret_cast<char*>(hdr), sizeof hdr);
  Checkpoint ck;
  LlamaConfig& c = ck.config;
  c.dim = hdr[0];
  c.hidden_dim = hdr[1];
  c.n_layers = hdr[2];
  c.n_heads = hdr[3];
  c.n_kv_heads = hdr[4];
  c.tied_classifier = hdr[5] > 0;  // run.c: a negative vocab size means an unshared classifier
  c.vocab_size = std::abs(hdr[5]);
  c.max_seq_len = hdr[6];
  // Bound every field before multiplying sizes: a wrong-format file gives huge values.
  const int32_t limits[7] = {1 << 16, 1 << 18, 1024, 1024, 1024, 1 << 22, 1 << 22};
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; i++)
    if (std::abs(hdr[i]) <= 0 || std::abs(hdr[i]) > limits[i])
      throw_input(path, std::string("header.") + names[i],
                  "implausible value " + std::to_string(hdr[i]) + " (not a llama2.c checkpoint?)");
  llama_config_validate(c, path + ": header");

  int64_t expected = 28;
  auto layout = bin_layout(c);
  for (auto& t : layout) expected += 4 * numel_of(t.shape);
  if (file_size != expected)
    throw_input(path, "",
                "size " + std::to_string(file_size) + " bytes does not match the header (" +
                    llama_config_describe(c) + ") which needs " + std::to_string(expected) +
                    (file_size < expected ? " (truncated)" : ""));
  int64_t offset = 28;
  for (auto& t : layout) {
    int64_t n = numel_of(t.shape);
    if (!t.name.empty() && parts.has(c, t.name)) {
      torch::Tensor w = torch::empty(t.shape, torch::kFloat32);
      in.seekg(offset);
      in.read(reinterpret_cast<char*>(w.data_ptr<float>()), 4 * n);
      if (!in) throw_input(path, t.name, "read failed at byte " + std::to_string(offset));
      ck.weights[t.name] = w;
    }
    offset += 4 * n;
  }
  return ck;
}

void checkpoint_write_bin(const std::string& path, const Checkpoint& ck) {
  const LlamaConfig& c = ck.config;
  if (c.qkv_bias) throw InputError(path + ": the llama2.c format has no q/k/v biases (this model has them)");
  int32_t hdr[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                    c.tied_classifier ? c.vocab_size : -c.vocab_size, c.max_seq_len};
  std::string out((const char*)hdr, sizeof hdr);
  torch::Tensor tables[2];
  rope_tables(c, c.max_seq_len, &tables[0], &tables[1]);
  int table = 0;
  for (auto& t : bin_layout(c)) {
    torch::Tensor w;
    if (t.name.empty()) {
      w = tables[table++];  // the legacy cos table, then the sin table
    } else {
      auto it = ck.weights.find(t.name);
      if (it == ck.weights.end()) throw InputError(path + ": cannot write, checkpoint lacks " + t.name);
      w = it->second;
    }
    if (w.sizes().vec() != t.shape) throw InputError(path + ": cannot write " + t.name + ": shape does not match the config");
    w = w.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    out.append((const char*)w.data_ptr<float>(), 4 * w.numel());
  }
  file_write_atomic(path, out);
}

// ---------------------------------------------------------------- Hugging Face

// Every weight's shape against the config, so a converter run fails before it writes.
static void checkpoint_check_shapes(const Checkpoint& ck, const std::string& source) {
  const LlamaConfig& c = ck.config;
  const int64_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  for (auto& w : ck.weights) {
    const std::string& n = w.first;
    std::vector<int64_t> want;
    if (n == "tok_embeddings.weight" || n == "output.weight") want = {c.vocab_size, d};
    else if (ends_with(n, "norm.weight") || ends_with(n, "wq.bias")) want = {d};
    else if (ends_with(n, "wk.bias") || ends_with(n, "wv.bias")) want = {kv};
    else if (ends_with(n, "wq.weight") || ends_with(n, "wo.weight")) want = {d, d};
    else if (ends_with(n, "wk.weight") || ends_with(n, "wv.weight")) want = {kv, d};
    else if (ends_with(n, "w1.weight") || ends_with(n, "w3.weight")) want = {h, d};
    else if (ends_with(n, "w2.weight")) want = {d, h};
    if (w.second.sizes().vec() != want) {
      std::ostringstream s;
      s << "shape " << w.second.sizes() << " does not match config.json (" << llama_config_describe(c) << ")";
      throw_input(source, n, s.str());
    }
  }
}

torch::Tensor hf_permute(const torch::Tensor& w, int n_heads) {
  // HF's convert_llama_weights_to_hf: w.view(n_heads, dim1/n_heads/2, 2, dim2).transpose(1, 2)
  int64_t rows = w.size(0);
  return w.reshape({n_heads, rows / n_heads / 2, 2, -1}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

torch::Tensor hf_unpermute(const torch::Tensor& w, int n_heads) {
  int64_t rows = w.size(0);
  return w.reshape({n_heads, 2, rows / n_heads / 2, -1}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// Our per-layer names and HF's, and which projections carry the RoPE permutation.
struct HfName {
  const char* ours;
  const char* hf;
  int permute;  // 0 none, 1 by n_heads (q), 2 by n_kv_heads (k)
};
static const HfName kHfLayerNames[] = {
    {"attention_norm.weight", "input_layernorm.weight", 0},
    {"wq.weight", "self_attn.q_proj.weight", 1},
    {"wk.weight", "self_attn.k_proj.weight", 2},
    {"wv.weight", "self_attn.v_proj.weight", 0},
    {"wo.weight", "self_attn.o_proj.weight", 0},
    {"wq.bias", "self_attn.q_proj.bias", 1},
    {"wk.bias", "self_attn.k_proj.bias", 2},
    {"wv.bias", "self_attn.v_proj.bias", 0},
    {"ffn_norm.weight", "post_attention_layernorm.weight", 0},
    {"w1.weight", "mlp.gate_proj.weight", 0},
    {"w2.weight", "mlp.down_proj.weight", 0},
    {"w3.weight", "mlp.up_proj.weight", 0},
};

// Resolves a folder / config.json / *.safetensors path to (folder, tensor files).
static void hf_locate(const std::string& path, std::string* dir, std::vector<std::string>* files) {
  std::string single;
  if (fs::is_directory(path)) {
    *dir = path;
  } else if (ends_with(path, ".safetensors")) {
    *dir = fs::path(path).parent_path().string();
    single = path;
  } else if (ends_with(path, "config.json")) {
    *dir = fs::path(path).parent_path().string();
  } else {
    throw_input(path, "", "not a checkpoint: expected a .bin file, a folder with config.json, or a .safetensors file");
  }
  if (dir->empty()) *dir = ".";
  if (!single.empty()) {
    files->push_back(single);
    return;
  }
  std::string one = path_join(*dir, "model.safetensors");
  std::string index = path_join(*dir, "model.safetensors.index.json");
  if (file_exists(one)) {
    files->push_back(one);
  } else if (file_exists(index)) {
    JsonIn idx = JsonIn::load_file(index);
    JsonIn map = idx.at("weight_map");
    std::set<std::string> shards;
    for (auto& k : map.keys()) shards.insert(map.string(k));
    for (auto& s : shards) files->push_back(path_join(*dir, s));
  } else {
    throw_input(*dir, "", "no model.safetensors or model.safetensors.index.json in the folder");
  }
}

static LlamaConfig hf_config_read(const std::string& file) {
  if (!file_exists(file)) throw_input(file, "", "config.json not found next to the weights");
  JsonIn j = JsonIn::load_file(file);
  LlamaConfig c;
  const int64_t big = 1 << 24;
  c.dim = (int)j.integer("hidden_size", 1, big);
  c.hidden_dim = (int)j.integer("intermediate_size", 1, big);
  c.n_layers = (int)j.integer("num_hidden_layers", 1, 4096);
  c.n_heads = (int)j.integer("num_attention_heads", 1, 4096);
  // HF's LlamaConfig defaults: kv heads = heads, eps 1e-6, theta 10000, untied.
  c.n_kv_heads = (int)j.integer_or("num_key_value_heads", c.n_heads, 1, 4096);
  c.vocab_size = (int)j.integer("vocab_size", 1, big);
  c.max_seq_len = (int)j.integer_or("max_position_embeddings", 2048, 1, big);
  c.norm_eps = (float)j.number_or("rms_norm_eps", 1e-6, 0, 1);
  c.rope_theta = (float)j.number_or("rope_theta", 10000.0, 1e-6, 1e12);
  c.tied_classifier = j.boolean_or("tie_word_embeddings", false);
  std::string model_type = j.string_or("model_type", "llama");
  // Qwen2 always has q/k/v biases; Llama-style configs say so with attention_bias.
  c.qkv_bias = model_type == "qwen2" || j.boolean_or("attention_bias", false);
  if (j.has("hidden_act") && j.string("hidden_act") != "silu")
    j.fail_at("hidden_act", "only \"silu\" (SwiGLU) is supported, got \"" + j.string("hidden_act") + "\"");
  if (j.has("head_dim") && !j.at("head_dim").raw().is_null() && j.integer("head_dim") != c.dim / c.n_heads)
    j.fail_at("head_dim", "only head_dim = hidden_size / num_attention_heads is supported");
  llama_config_validate(c, file);
  return c;
}

Checkpoint checkpoint_read_hf(const std::string& path, const LlamaParts& parts) {
  if (!file_exists(path)) throw_input(path, "", "checkpoint not found");
  std::string dir;
  std::vector<std::string> files;
  hf_locate(path, &dir, &files);
  Checkpoint ck;
  ck.config = hf_config_read(path_join(dir, "config.json"));
  const LlamaConfig& c = ck.config;

  // HF name -> ours, for the tensors of a LLaMA-family model; `parts` picks which are read.
  std::map<std::string, std::string> ours_of = {{"model.embed_tokens.weight", "tok_embeddings.weight"},
                                                {"model.norm.weight", "norm.weight"}};
  if (!c.tied_classifier) ours_of["lm_head.weight"] = "output.weight";
  for (int l = 0; l < c.n_layers; l++)
    for (auto& n : kHfLayerNames)
      ours_of["model.layers." + std::to_string(l) + "." + n.hf] = "layers." + std::to_string(l) + "." + n.ours;
  auto want = [&](const std::string& hf_name) {
    auto it = ours_of.find(hf_name);
    return it != ours_of.end() && parts.has(c, it->second);
  };

  std::map<std::string, torch::Tensor> hf;
  std::set<std::string> skipped;              // in the files, not read (other parts)
  std::map<std::string, std::string> origin;  // tensor -> file, for messages
  for (auto& f : files) {
    SafeTensors st = safetensors_read(f, want);
    for (auto& kv : st.tensors) {
      hf[kv.first] = kv.second;
      origin[kv.first] = f;
    }
    for (auto& n : st.skipped) {
      skipped.insert(n);
      origin[n] = f;
    }
  }
  std::set<std::string> used;
  auto take = [&](const std::string& name, bool required) -> torch::Tensor {
    auto it = hf.find(name);
    if (it == hf.end()) {
      bool present = skipped.count(name) > 0;
      if (present) used.insert(name);
      if (required && !present) throw_input(files.size() == 1 ? files[0] : dir, name, "tensor missing");
      return torch::Tensor();
    }
    used.insert(name);
    if (!it->second.is_floating_point())
      throw_input(origin[name], name, "expected a floating-point tensor");
    return it->second.to(torch::kFloat32);
  };
  // Only the wanted tensors go into the checkpoint; the others are checked to exist.
  auto put = [&](const std::string& ours, torch::Tensor t) {
    if (t.defined()) ck.weights[ours] = t;
  };
  put("tok_embeddings.weight", take("model.embed_tokens.weight", true));
  for (int l = 0; l < c.n_layers; l++) {
    std::string hp = "model.layers." + std::to_string(l) + ".", op = "layers." + std::to_string(l) + ".";
    for (auto& n : kHfLayerNames) {
      bool is_bias = ends_with(n.ours, ".bias");
      if (is_bias && !c.qkv_bias) continue;
      put(op + n.ours, take(hp + n.hf, true));
    }
  }
  put("norm.weight", take("model.norm.weight", true));
  torch::Tensor head = take("lm_head.weight", !c.tied_classifier);
  if (!c.tied_classifier) put("output.weight", head);
  std::set<std::string> all_names = skipped;
  for (auto& kv : hf) all_names.insert(kv.first);
  for (auto& n : all_names) {
    bool ignorable = ends_with(n, "rotary_emb.inv_freq");  // a buffer older exports saved
    if (!used.count(n) && !ignorable)
      throw_input(origin[n], n, "unexpected tensor for a LLaMA-family model (" + llama_config_describe(c) + ")");
  }
  checkpoint_check_shapes(ck, files.size() == 1 ? files[0] : dir);
  // Back to llama2.c's interleaved RoPE row order (shapes are known good now).
  for (int l = 0; l < c.n_layers; l++) {
    std::string op = "layers." + std::to_string(l) + ".";
    for (auto& n : kHfLayerNames) {
      auto it = ck.weights.find(op + n.ours);
      if (it == ck.weights.end() || n.permute == 0) continue;
      it->second = hf_unpermute(it->second, n.permute == 1 ? c.n_heads : c.n_kv_heads);
    }
  }
  return ck;
}

void checkpoint_write_hf(const std::string& dir, const Checkpoint& ck) {
  const LlamaConfig& c = ck.config;
  json cfg = {
      {"architectures", {c.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", c.qkv_bias ? "qwen2" : "llama"},
      {"hidden_size", c.dim},
      {"intermediate_size", c.hidden_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tied_classifier},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  std::map<std::string, torch::Tensor> hf;
  auto get = [&](const std::string& ours) -> torch::Tensor {
    auto it = ck.weights.find(ours);
    if (it == ck.weights.end()) throw InputError(dir + ": cannot write, checkpoint lacks " + ours);
    return it->second.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  };
  hf["model.embed_tokens.weight"] = get("tok_embeddings.weight");
  for (int l = 0; l < c.n_layers; l++) {
    std::string hp = "model.layers." + std::to_string(l) + ".", op = "layers." + std::to_string(l) + ".";
    for (auto& n : kHfLayerNames) {
      if (ends_with(n.ours, ".bias") && !c.qkv_bias) continue;
      torch::Tensor w = get(op + n.ours);
      if (n.permute == 1) w = hf_permute(w, c.n_heads);
      if (n.permute == 2) w = hf_permute(w, c.n_kv_heads);
      hf[hp + n.hf] = w;
    }
  }
  hf["model.norm.weight"] = get("norm.weight");
  if (!c.tied_classifier) hf["lm_head.weight"] = get("output.weight");
  // Tensors first, config last: a folder with a config.json is a complete checkpoint.
  safetensors_write(path_join(dir, "model.safetensors"), hf, {{"format", "pt"}});
  file_write_atomic(path_join(dir, "config.json"), cfg.dump(2) + "\n");
}

Checkpoint checkpoint_read(const std::string& path, const LlamaParts& parts) {
  if (checkpoint_format_of(path) == CheckpointFormat::Llama2c) return checkpoint_read_bin(path, parts);
  return checkpoint_read_hf(path, parts);
}

void checkpoint_write(const std::string& path, const Checkpoint& ck) {
  if (checkpoint_format_of(path) == CheckpointFormat::Llama2c) return checkpoint_write_bin(path, ck);
  std::string dir = path;
  if (ends_with(path, ".safetensors") || ends_with(path, "config.json")) dir = fs::path(path).parent_path().string();
  checkpoint_write_hf(dir.empty() ? "." : dir, ck);
}

// ---------------------------------------------------------------- model <-> checkpoint

Llama llama_from_checkpoint(const Checkpoint& ck, const std::string& source, const LlamaParts& parts) {
  Llama m(ck.config, parts);
  std::set<std::string> set;
  for (auto& kv : ck.weights) {
    if (!parts.has(ck.config, kv.first)) continue;  // a whole checkpoint onto a stage
    m->set_weight(kv.first, kv.second, source);
    set.insert(kv.first);
  }
  for (auto& kv : m->backbone_named_parameters())
    if (!set.count(kv.first)) throw_input(source, kv.first, "weight missing from the checkpoint");
  return m;
}

Checkpoint checkpoint_from_llama(Llama& model) {
  Checkpoint ck;
  ck.config = model->config();
  for (auto& kv : model->backbone_named_parameters()) ck.weights[kv.first] = kv.second.detach().clone();
  return ck;
}

Llama llama_load(const std::string& path, const LlamaParts& parts) {
  return llama_from_checkpoint(checkpoint_read(path, parts), path, parts);
}

int llama_load_method_weights(Llama& model, const std::string& path) {
  SafeTensors st = safetensors_read(path);
  int lora_rank = 0, bottleneck = 0;
  bool lora_mlp = false;
  for (auto& kv : st.tensors) {
    const std::string& n = kv.first;
    if (ends_with(n, ".lora_a")) {
      lora_rank = (int)kv.second.size(0);
      if (n.find(".w1.") != std::string::npos || n.find(".w2.") != std::string::npos || n.find(".w3.") != std::string::npos)
        lora_mlp = true;
    }
    if (ends_with(n, "_adapter.down.weight")) bottleneck = (int)kv.second.size(0);
  }
  if (lora_rank > 0) {
    float alpha = (float)lora_rank;
    auto it = st.metadata.find("lora_alpha");
    if (it != st.metadata.end()) {
      try {
        alpha = std::stof(it->second);
      } catch (const std::exception&) {
        throw_input(path, "__metadata__.lora_alpha", "expected a number, got '" + it->second + "'");
      }
    }
    model->enable_lora(lora_rank, alpha, lora_mlp);
  }
  if (bottleneck > 0) model->enable_adapters(bottleneck);
  for (auto& kv : st.tensors) model->set_weight(kv.first, kv.second, path);
  return (int)st.tensors.size();
}

Llama llama_open(const std::string& name_or_path, uint64_t seed, const LlamaParts& parts) {
  std::vector<std::string> presets = llama_config_preset_names();
  if (std::find(presets.begin(), presets.end(), name_or_path) == presets.end()) return llama_load(name_or_path, parts);
  if (name_or_path == "stories260K") {
    std::string shipped = model_path("stories260K/stories260K.bin");
    if (file_exists(shipped)) return llama_load(shipped, parts);
  }
  Llama m(llama_config_preset(name_or_path), parts);
  m->init_random(seed);
  return m;
}

std::string model_dir() {
  if (const char* d = std::getenv("PAC_MODEL_DIR"); d && *d) return d;
  if (const char* s = std::getenv("PAC_SOURCE_DIR"); s && *s) return path_join(path_join(s, ".."), "shared/models");
  return "../shared/models";
}

std::string model_path(const std::string& relative) { return path_join(model_dir(), relative); }

}  // namespace pac
