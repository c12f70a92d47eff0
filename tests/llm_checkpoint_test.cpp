// Checkpoints: llama2.c .bin and Hugging Face safetensors + config.json, the q/k row
// permutation checked against HF's rotate_half RoPE, round trips, and bad inputs.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/checkpoint.h"
#include "src/llm/safetensors.h"
#include "src/llm/side_network.h"

using namespace pac;
namespace stdfs = std::filesystem;

static std::string stories_path() { return model_path("stories260K/stories260K.bin"); }

#define REQUIRE_STORIES()                                                                           \
  if (!file_exists(stories_path())) GTEST_SKIP() << "shared model absent: " << stories_path() \
                                                 << " (set PAC_MODEL_DIR)"


class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (stdfs::temp_directory_path() /
            ("pac_ckpt." + std::to_string(getpid()) + "." + ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    stdfs::remove_all(dir_);
    dir_create(dir_);
  }
  void TearDown() override { stdfs::remove_all(dir_); }
  std::string at(const std::string& name) const { return path_join(dir_, name); }
  std::string dir_;
};

static torch::Tensor logits_of(Llama& m, std::vector<int64_t> ids) {
  torch::NoGradGuard ng;
  return m->forward(torch::tensor(ids, torch::kInt64).view({1, -1}));
}

static void expect_same_weights(const Checkpoint& a, const Checkpoint& b) {
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (auto& kv : a.weights) {
    auto it = b.weights.find(kv.first);
    ASSERT_NE(it, b.weights.end()) << kv.first;
    EXPECT_TRUE(torch::equal(kv.second, it->second)) << kv.first;  // bit-identical
  }
}

TEST_F(CheckpointTest, ReadsStories260KHeader) {
  REQUIRE_STORIES();
  Checkpoint ck = checkpoint_read(stories_path());
  // ../shared/models/README.md: dim 64, hidden 172, 5 layers, 8 heads, 4 kv, vocab 512 shared, seq 512.
  const LlamaConfig& c = ck.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_classifier);
  // 2 + 9 per layer tensors, tied: no output.weight.
  EXPECT_EQ(ck.weights.size(), 2u + 9u * 5u);
}

TEST_F(CheckpointTest, BinToHfToBinIsIdenticalAndGivesSameLogits) {
  REQUIRE_STORIES();
  Checkpoint bin = checkpoint_read(stories_path());
  checkpoint_write(at("hf"), bin);
  Checkpoint hf = checkpoint_read(at("hf"));
  expect_same_weights(bin, hf);
  checkpoint_write(at("back.bin"), hf);
  expect_same_weights(bin, checkpoint_read(at("back.bin")));
  // Same file size as the original: same header and layout (legacy RoPE tables included).
  EXPECT_EQ(file_size(at("back.bin")), file_size(stories_path()));
  Llama a = llama_load(stories_path()), b = llama_load(at("hf"));
  EXPECT_TRUE(torch::equal(logits_of(a, {1, 403, 407, 261, 378}), logits_of(b, {1, 403, 407, 261, 378})));
  // The HF file really holds permuted q rows (not a copy of ours).
  SafeTensors st = safetensors_read(at("hf/model.safetensors"));
  EXPECT_FALSE(torch::equal(st.tensors.at("model.layers.0.self_attn.q_proj.weight"), bin.weights.at("layers.0.wq.weight")));
}

TEST_F(CheckpointTest, ReadsShardedHfFolder) {
  // Split a written model.safetensors into two shards plus model.safetensors.index.json,
  // the layout large HF models ship in: the same weights come back.
  Llama m(llama_config_preset("tiny"));
  m->init_random(5);
  Checkpoint ck = checkpoint_from_llama(m);
  checkpoint_write(at("hf"), ck);
  SafeTensors all = safetensors_read(at("hf/model.safetensors"));
  std::map<std::string, torch::Tensor> a, b;
  json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
  int i = 0;
  for (auto& kv : all.tensors) {
    bool first = i++ % 2 == 0;
    (first ? a : b)[kv.first] = kv.second;
    index["weight_map"][kv.first] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  safetensors_write(at("sharded/model-00001-of-00002.safetensors"), a);
  safetensors_write(at("sharded/model-00002-of-00002.safetensors"), b);
  file_write_atomic(at("sharded/model.safetensors.index.json"), index.dump());
  file_write_atomic(at("sharded/config.json"), file_read(at("hf/config.json")));
  expect_same_weights(ck, checkpoint_read(at("sharded")));
}

TEST(HfPermute, MatchesIndexFormulaAndRotateHalfRope) {
  // HF's permute moves row (head h, pair i, element e) = h*hs + 2i + e to h*hs + e*hs/2 + i.
  const int n_heads = 2, hs = 8, in = 3;
  torch::Tensor w = torch::arange(n_heads * hs * in, torch::kFloat32).view({n_heads * hs, in});
  torch::Tensor p = hf_permute(w, n_heads);
  for (int h = 0; h < n_heads; h++)
    for (int i = 0; i < hs / 2; i++)
      for (int e = 0; e < 2; e++)
        EXPECT_TRUE(torch::equal(p[h * hs + e * hs / 2 + i], w[h * hs + 2 * i + e]));
  EXPECT_TRUE(torch::equal(hf_unpermute(p, n_heads), w));

  // Semantics: HF's rotate_half RoPE on permuted rows equals llama2.c's interleaved RoPE on
  // the original rows, up to the same permutation of the output.
  torch::Tensor q = torch::randn({hs});  // one head's query
  const float pos = 5, theta = 10000;
  torch::Tensor inter = q.clone(), half = hf_permute(q.view({hs, 1}), 1).view({hs});
  torch::Tensor half_out = half.clone();
  for (int i = 0; i < hs / 2; i++) {
    float f = pos * (1.0f / powf(theta, 2.0f * i / hs)), c = cosf(f), s = sinf(f);
    float a = q[2 * i].item<float>(), b = q[2 * i + 1].item<float>();
    inter[2 * i] = a * c - b * s;
    inter[2 * i + 1] = a * s + b * c;
    // rotate_half: out[i] = x[i] c - x[i + hs/2] s ; out[i + hs/2] = x[i + hs/2] c + x[i] s
    float x0 = half[i].item<float>(), x1 = half[i + hs / 2].item<float>();
    half_out[i] = x0 * c - x1 * s;
    half_out[i + hs / 2] = x1 * c + x0 * s;
  }
  EXPECT_TRUE(torch::allclose(hf_permute(inter.view({hs, 1}), 1).view({hs}), half_out, 1e-6, 1e-6));
}

TEST_F(CheckpointTest, UntiedAndBiasedModelsRoundTrip) {
  // Untied classifier through .bin (negative vocab in the header) and HF.
  LlamaConfig c = llama_config_preset("tiny");
  c.tied_classifier = false;
  Llama m(c);
  m->init_random(3);
  Checkpoint ck = checkpoint_from_llama(m);
  checkpoint_write(at("u.bin"), ck);
  std::string bytes = file_read(at("u.bin"));
  int32_t vocab;
  std::memcpy(&vocab, bytes.data() + 20, 4);
  EXPECT_EQ(vocab, -64);  // run.c's convention for an unshared classifier
  expect_same_weights(ck, checkpoint_read(at("u.bin")));
  checkpoint_write(at("u_hf"), ck);
  Llama back = llama_load(at("u_hf"));
  EXPECT_TRUE(torch::equal(logits_of(m, {1, 2, 3}), logits_of(back, {1, 2, 3})));

  // Qwen2-style q/k/v biases (permuted like the weights) through HF; .bin cannot hold them.
  c.qkv_bias = true;
  Llama q(c);
  q->init_random(4);
  {
    torch::NoGradGuard ng;
    for (auto& kv : q->backbone_named_parameters())
      if (kv.first.find(".bias") != std::string::npos) kv.second.normal_(0, 0.5);
  }
  Checkpoint qk = checkpoint_from_llama(q);
  checkpoint_write(at("q_hf"), qk);
  EXPECT_EQ(JsonIn::load_file(at("q_hf/config.json")).string("model_type"), "qwen2");
  Llama qb = llama_load(at("q_hf"));
  EXPECT_TRUE(torch::equal(logits_of(q, {5, 6, 7}), logits_of(qb, {5, 6, 7})));
  EXPECT_THROW(checkpoint_write(at("q.bin"), qk), InputError);
}

TEST_F(CheckpointTest, SafetensorsDtypesAndMetadataRoundTrip) {
  std::map<std::string, torch::Tensor> t = {
      {"a", torch::randn({2, 3})},
      {"b", torch::randn({4}).to(torch::kFloat16)},
      {"c", torch::randn({3, 1}).to(torch::kBFloat16)},
      {"d", torch::arange(5, torch::kInt64)},
      {"e", torch::empty({0, 4})},
  };
  safetensors_write(at("t.safetensors"), t, {{"lora_alpha", "16"}});
  SafeTensors r = safetensors_read(at("t.safetensors"));
  ASSERT_EQ(r.tensors.size(), t.size());
  for (auto& kv : t) {
    EXPECT_EQ(r.tensors[kv.first].scalar_type(), kv.second.scalar_type()) << kv.first;
    EXPECT_TRUE(torch::equal(r.tensors[kv.first], kv.second)) << kv.first;
  }
  EXPECT_EQ(r.metadata.at("lora_alpha"), "16");
  // Header length is 8-aligned: the data section starts aligned.
  std::string bytes = file_read(at("t.safetensors"));
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(CheckpointTest, BadSafetensorsNameFileAndTensor) {
  std::string good = safetensors_serialize({{"w", torch::ones({4, 4})}});
  auto bad_file = [&](const std::string& name, const std::string& bytes) {
    file_write_atomic(at(name), bytes);
    return input_error([&] { safetensors_read(at(name)); });
  };
  std::string e = bad_file("trunc.safetensors", good.substr(0, good.size() - 10));
  EXPECT_NE(e.find("trunc.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("w.data_offsets"), std::string::npos) << e;
  e = bad_file("short.safetensors", "abc");
  EXPECT_NE(e.find("at least 8"), std::string::npos) << e;
  std::string hdr = "{\"w\": {\"dtype\": \"F32\", \"shape\": [4, 4], \"data_offsets\": [0, 60]}}";
  std::string len(8, '\0');
  len[0] = (char)hdr.size();
  e = bad_file("span.safetensors", len + hdr + std::string(64, '\0'));
  EXPECT_NE(e.find("shape needs 64"), std::string::npos) << e;
  std::string json_bad = "{\"w\": [1, 2";
  len[0] = (char)json_bad.size();
  e = bad_file("json.safetensors", len + json_bad);
  EXPECT_NE(e.find("invalid JSON"), std::string::npos) << e;
  std::string huge(8, '\xff');
  e = bad_file("huge.safetensors", huge + "{}");
  EXPECT_NE(e.find("exceeds the file"), std::string::npos) << e;
}

TEST_F(CheckpointTest, BadCheckpointsNameFileAndProblem) {
  REQUIRE_STORIES();
  std::string bytes = file_read(stories_path());
  file_write_atomic(at("cut.bin"), bytes.substr(0, bytes.size() / 2));
  std::string e = input_error([&] { checkpoint_read(at("cut.bin")); });
  EXPECT_NE(e.find("cut.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  file_write_atomic(at("text.bin"), std::string("this is a text file, not a checkpoint at all"));
  e = input_error([&] { checkpoint_read(at("text.bin")); });
  EXPECT_NE(e.find("implausible"), std::string::npos) << e;
  e = input_error([&] { checkpoint_read(at("missing.bin")); });
  EXPECT_NE(e.find("missing.bin"), std::string::npos) << e;

  // HF folder with a config.json missing a required key.
  checkpoint_write(at("hf"), checkpoint_read(stories_path()));
  json cfg = JsonIn::load_file(at("hf/config.json")).raw();
  cfg.erase("num_hidden_layers");
  file_write_atomic(at("hf/config.json"), cfg.dump());
  e = input_error([&] { checkpoint_read(at("hf")); });
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("num_hidden_layers"), std::string::npos) << e;
  // A config that disagrees with the tensors names the tensor.
  cfg["num_hidden_layers"] = 5;
  cfg["intermediate_size"] = 100;
  file_write_atomic(at("hf/config.json"), cfg.dump());
  e = input_error([&] { checkpoint_read(at("hf")); });
  EXPECT_NE(e.find("layers.0.w1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("does not match config.json"), std::string::npos) << e;
  e = input_error([&] { checkpoint_read(at("nowhere")); });
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
}

TEST_F(CheckpointTest, MethodWeightsLoadOntoAFreshModel) {
  Llama m(llama_config_preset("tiny"));
  m->init_random(9);
  m->enable_lora(4, 8.f, true);
  m->enable_adapters(6);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->method_parameters()) p.normal_(0, 0.1);
  }
  std::map<std::string, torch::Tensor> saved;
  for (auto& kv : m->named_parameters(true))
    if (LlamaImpl::is_method_parameter(kv.key())) saved[kv.key()] = kv.value().detach();
  safetensors_write(at("lora.safetensors"), saved, {{"lora_alpha", "8"}});

  Llama fresh(llama_config_preset("tiny"));
  fresh->init_random(9);  // same backbone
  EXPECT_EQ(llama_load_method_weights(fresh, at("lora.safetensors")), (int)saved.size());
  EXPECT_TRUE(torch::equal(logits_of(m, {1, 2, 3, 4}), logits_of(fresh, {1, 2, 3, 4})));
  safetensors_write(at("junk.safetensors"), {{"side.0.w", torch::ones({2})}});
  std::string e = input_error([&] { llama_load_method_weights(fresh, at("junk.safetensors")); });
  EXPECT_NE(e.find("side.0.w"), std::string::npos) << e;
}

// pac-convert: exit 2 on bad input and nothing written; a good conversion loads back.
static std::string bin_dir() {
  const char* d = std::getenv("PAC_BIN_DIR");
  return d ? d : std::string(PAC_BINARY_DIR) + "/bin";
}

TEST_F(CheckpointTest, ConvertCliExitCodes) {
  REQUIRE_STORIES();
  std::string tool = path_join(bin_dir(), "pac-convert");
  if (!file_exists(tool)) GTEST_SKIP() << "pac-convert not built: " << tool;
  file_write_atomic(at("cut.bin"), file_read(stories_path()).substr(0, 5000));
  int rc = std::system((tool + " " + at("cut.bin") + " " + at("out") + " 2>/dev/null").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
  EXPECT_FALSE(file_exists(at("out")));
  rc = std::system((tool + " " + stories_path() + " " + at("out") + " 2>/dev/null").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 0);
  expect_same_weights(checkpoint_read(stories_path()), checkpoint_read(at("out")));
  rc = std::system((tool + " --preset no-such " + at("p") + " 2>/dev/null").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
}

// ---------------------------------------------------------------- model parts (a stage's slice)

static LlamaConfig four_layer_config(bool tied) {
  LlamaConfig c = llama_config_preset("tiny");
  c.n_layers = 4;
  c.tied_classifier = tied;
  return c;
}

static std::map<std::string, torch::Tensor> named(Llama& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : m->named_parameters(true)) out[kv.key()] = kv.value();
  return out;
}

// Every tensor of `part` equals (bitwise) the same-named tensor of `whole`, and `part`
// holds exactly the names LlamaParts::has admits.
static void expect_part_of(Llama& part, Llama& whole, const LlamaParts& p, size_t expect_count) {
  auto pw = named(part), ww = named(whole);
  EXPECT_EQ(pw.size(), expect_count);
  for (auto& kv : ww) {
    if (!p.has(whole->config(), kv.first)) {  // method weights sit under "layers.N." too
      EXPECT_EQ(pw.count(kv.first), 0u) << kv.first;
      continue;
    }
    ASSERT_EQ(pw.count(kv.first), 1u) << kv.first;
    EXPECT_TRUE(torch::equal(pw[kv.first], kv.second)) << kv.first;
  }
}

TEST(LlamaParts, RandomInitOfAPartEqualsTheWholeModelsTensors) {
  // A stage built alone draws each tensor from (seed, name): layers 1-2 of a 4-layer model,
  // with the head, equal the whole model's layers 1-2 and head, and nothing else exists.
  for (bool tied : {true, false}) {
    LlamaConfig c = four_layer_config(tied);
    Llama whole(c);
    whole->init_random(11);
    LlamaParts p = LlamaParts::layers(1, 3, false, true);
    Llama part(c, p);
    part->init_random(11);
    // 9 tensors per layer x 2 layers + norm + classifier (the embedding when tied, else output).
    expect_part_of(part, whole, p, 2 * 9 + 2);
    // The same slice computes the same function.
    torch::NoGradGuard ng;
    torch::Tensor x = torch::randn({2, 5, c.dim});
    EXPECT_TRUE(torch::equal(part->layers_forward(1, 3, x), whole->layers_forward(1, 3, x)));
    EXPECT_TRUE(torch::equal(part->classify(part->final_norm(x)), whole->classify(whole->final_norm(x))));
    // Another stage's layer and the embedding are refused, naming what is held.
    try {
      part->layer_forward(0, x);
      ADD_FAILURE() << "layer 0 is not in the part";
    } catch (const RuntimeError& e) {
      EXPECT_NE(std::string(e.what()).find("layer 0 is not loaded here"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("layers 1-2, head"), std::string::npos) << e.what();
    }
    EXPECT_THROW(part->embed(torch::zeros({1, 3}, torch::kLong)), RuntimeError);
  }
}

TEST(LlamaParts, MethodWeightsOfAPartEqualTheWholeModels) {
  // LoRA and Houlsby adapters on layers 2-3 alone get the values the whole model gives them.
  LlamaConfig c = four_layer_config(true);
  LlamaParts p = LlamaParts::layers(2, 4, false, true);
  Llama whole(c), part(c, p);
  whole->init_random(5);
  part->init_random(5);
  whole->enable_lora(4, 8.f, true, 9);
  part->enable_lora(4, 8.f, true, 9);
  // 2 layers x (9 backbone + 7 linears x (lora_a, lora_b)) + norm + embedding.
  expect_part_of(part, whole, p, 2 * (9 + 14) + 2);
  Llama wa(c), pa(c, p);
  wa->enable_adapters(6, 9);
  pa->enable_adapters(6, 9);
  auto w = named(wa), q = named(pa);
  for (const char* n : {"layers.2.attn_adapter.down.weight", "layers.3.ffn_adapter.down.bias"})
    EXPECT_TRUE(torch::equal(w[n], q[n])) << n;
  // A different seed gives different method weights (the seed is used).
  Llama other(c, p);
  other->enable_lora(4, 8.f, true, 10);
  EXPECT_FALSE(torch::equal(named(other)["layers.2.wq.lora_a"], named(part)["layers.2.wq.lora_a"]));
}

TEST_F(CheckpointTest, ReadingAPartReadsOnlyItsTensors) {
  // .bin and HF: a stage's read holds its layers' tensors only, equal to the whole read.
  for (bool tied : {true, false}) {
    LlamaConfig c = four_layer_config(tied);
    Llama m(c);
    m->init_random(2);
    Checkpoint whole = checkpoint_from_llama(m);
    std::string bin = at(tied ? "t.bin" : "u.bin"), hf = at(tied ? "t_hf" : "u_hf");
    checkpoint_write(bin, whole);
    checkpoint_write(hf, whole);
    for (const std::string& path : {bin, hf}) {
      // Middle stage: layers 1-2 only.
      LlamaParts mid = LlamaParts::layers(1, 3, false, false);
      Checkpoint ck = checkpoint_read(path, mid);
      EXPECT_EQ(ck.weights.size(), 2u * 9) << path;
      for (auto& kv : ck.weights) {
        EXPECT_NE(kv.first.find("layers."), std::string::npos) << path << " " << kv.first;
        EXPECT_TRUE(torch::equal(kv.second, whole.weights.at(kv.first))) << path << " " << kv.first;
      }
      // First stage with the embedding; last with the head (+ the embedding when tied).
      EXPECT_EQ(checkpoint_read(path, LlamaParts::layers(0, 1, true, false)).weights.size(), 9u + 1);
      EXPECT_EQ(checkpoint_read(path, LlamaParts::layers(3, 4, false, true)).weights.size(), 9u + 2);
      Llama stage = llama_load(path, LlamaParts::layers(3, 4, false, true));
      torch::NoGradGuard ng;
      torch::Tensor x = torch::randn({1, 4, c.dim});
      EXPECT_TRUE(torch::equal(stage->classify(stage->final_norm(stage->layer_forward(3, x))),
                               m->classify(m->final_norm(m->layer_forward(3, x)))))
          << path;
    }
  }
  // A part of a file that lacks a tensor of another part is still refused (the whole file
  // is checked): drop layer 0's wq from an HF folder, read only layer 3.
  LlamaConfig c = four_layer_config(true);
  Llama m(c);
  m->init_random(2);
  Checkpoint ck = checkpoint_from_llama(m);
  checkpoint_write(at("h"), ck);
  SafeTensors st = safetensors_read(at("h/model.safetensors"));
  st.tensors.erase("model.layers.0.self_attn.q_proj.weight");
  safetensors_write(at("h/model.safetensors"), st.tensors, st.metadata);
  EXPECT_THROW(checkpoint_read(at("h"), LlamaParts::layers(3, 4, false, false)), InputError);
}

TEST_F(CheckpointTest, PruningFromPartsEqualsPruningTheWholeModel) {
  // A pipeline worker prunes its side network reading the other layers one at a time:
  // the result equals init_pruned on the whole model, bit for bit.
  LlamaConfig c = four_layer_config(true);
  Llama m(c);
  m->init_random(4);
  checkpoint_write(at("p.bin"), checkpoint_from_llama(m));
  SideNetwork whole(side_config_make(c, 2)), parts(side_config_make(c, 2));
  whole->init_pruned(m);
  int opened = 0;
  parts->init_pruned_parts([&](const LlamaParts& p) {
    opened++;
    return llama_load(at("p.bin"), p);
  });
  // Embedding, 4 layers for the scores, the head, 4 layers for the blocks.
  EXPECT_EQ(opened, 1 + 4 + 1 + 4);
  auto a = whole->state(), b = parts->state();
  ASSERT_EQ(a.size(), b.size());
  for (auto& kv : a) EXPECT_TRUE(torch::equal(kv.second, b.at(kv.first))) << kv.first;
}
