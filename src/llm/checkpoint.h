// Model checkpoints: llama2.c .bin and Hugging Face safetensors + config.json.
//
// Both load into a Checkpoint: a LlamaConfig plus the weights under the model's own
// names (model.h), in llama2.c's interleaved-RoPE row order. The HF reader undoes the
// q/k row permutation that HF's convert_llama_weights_to_hf applies; the HF writer
// applies it again, so bin -> HF -> bin is byte-identical.
//
// llama2.c .bin: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; negative vocab = untied classifier), then fp32: token embedding, all layers'
// attention RMSNorm, wq, wk, wv, wo, FFN RMSNorm, w1, w2, w3, final RMSNorm, the two
// legacy RoPE tables (seq_len * head_dim/2 each, skipped on read, written as run.c's
// export does), classifier if untied.
// HF: a folder with config.json and model.safetensors (or model.safetensors.index.json +
// shards), LlamaForCausalLM / Qwen2ForCausalLM tensor names.
#pragma once
#include <map>
#include <string>

#include "src/llm/model.h"

namespace pac {

struct Checkpoint {
  LlamaConfig config;
  std::map<std::string, torch::Tensor> weights;  // model.h names, fp32 unless read otherwise
};

enum class CheckpointFormat { Llama2c, HuggingFace };

// .bin -> Llama2c; a folder, config.json or *.safetensors -> HuggingFace.
CheckpointFormat checkpoint_format_of(const std::string& path);

// With `parts`, only those weights are read (a pipeline stage's layers): the .bin reader
// seeks past the others, the safetensors reader maps the file and copies out only the
// wanted tensors, so a stage's memory never holds the whole model. The whole file is
// still validated (the .bin's header and size; every safetensors header entry and name;
// the shapes of the tensors read).
Checkpoint checkpoint_read_bin(const std::string& path, const LlamaParts& parts = LlamaParts::all());
// folder, its config.json or its .safetensors
Checkpoint checkpoint_read_hf(const std::string& path, const LlamaParts& parts = LlamaParts::all());
Checkpoint checkpoint_read(const std::string& path, const LlamaParts& parts = LlamaParts::all());

// Writers (atomic). The .bin writer requires fp32-convertible weights; the HF writer
// writes <dir>/config.json and <dir>/model.safetensors in F32.
void checkpoint_write_bin(const std::string& path, const Checkpoint& ck);
void checkpoint_write_hf(const std::string& dir, const Checkpoint& ck);
void checkpoint_write(const std::string& path, const Checkpoint& ck);

// HF <-> llama2.c row order of q/k projections (rows of one head: [h/2 pairs][2] <-> [2][h/2]).
torch::Tensor hf_permute(const torch::Tensor& w, int n_heads);    // llama2.c -> HF
torch::Tensor hf_unpermute(const torch::Tensor& w, int n_heads);  // HF -> llama2.c

// A model of `parts` from a checkpoint holding (at least) those parts' weights.
Llama llama_from_checkpoint(const Checkpoint& ck, const std::string& source,
                            const LlamaParts& parts = LlamaParts::all());
Checkpoint checkpoint_from_llama(Llama& model);  // backbone weights only, cloned
// checkpoint_read + llama_from_checkpoint
Llama llama_load(const std::string& path, const LlamaParts& parts = LlamaParts::all());
// A model for benchmarks and demos: a preset name (llama_config_preset) gets random
// weights from `seed`, except "stories260K", which loads the shipped weights when they are
// in model_dir(); anything else is a checkpoint path. With `parts`, only those are built
// (and read); their weights equal the same tensors of the whole model.
Llama llama_open(const std::string& name_or_path, uint64_t seed = 1, const LlamaParts& parts = LlamaParts::all());

// Fine-tuning weights saved by name (safetensors) onto a loaded model: LoRA tensors
// (layers.N.<linear>.lora_a/lora_b; rank from the shapes, alpha from metadata
// "lora_alpha", default = rank) and Houlsby adapters (layers.N.{attn,ffn}_adapter.*)
// enable the method first, then copy. Backbone names (full fine-tuning) overwrite the
// backbone. Returns how many tensors were applied. Other names -> InputError; Parallel
// Adapters (a side network outside the backbone) are loaded by the trainer's code.
int llama_load_method_weights(Llama& model, const std::string& path);

// The shared model folder: $PAC_MODEL_DIR, else $PAC_SOURCE_DIR/../shared/models, else
// "../shared/models". model_path("stories260K/stories260K.bin") joins it.
std::string model_dir();
std::string model_path(const std::string& relative);

}  // namespace pac
