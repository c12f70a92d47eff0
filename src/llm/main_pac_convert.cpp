// pac-convert: converts a checkpoint between llama2.c .bin and Hugging Face
// safetensors + config.json (format by extension: .bin, else a folder).
//   pac-convert stories260K.bin out/stories260K-hf      (bin -> HF folder)
//   pac-convert out/stories260K-hf back.bin             (HF -> bin)
//   pac-convert --preset tinyllama-1.1b --seed 1 out/tinyllama-random   (random init)
#include <CLI/CLI.hpp>

#include <cstdio>

#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/llm/checkpoint.h"

using namespace pac;

int main(int argc, char** argv) {
  return run_main("pac-convert", [&]() -> int {
    CLI::App app{"Convert LLaMA-family checkpoints between llama2.c .bin and Hugging Face safetensors"};
    std::string in, out, preset;
    uint64_t seed = 1;
    app.add_option("in", in, "input checkpoint (.bin, HF folder, its config.json or .safetensors)");
    app.add_option("out", out, "output: *.bin for llama2.c, anything else is an HF folder")->required();
    app.add_option("--preset", preset, "instead of an input: random weights of a named architecture (" +
                                           [] {
                                             std::string s;
                                             for (auto& n : llama_config_preset_names()) s += (s.empty() ? "" : ", ") + n;
                                             return s;
                                           }() + ")");
    app.add_option("--seed", seed, "seed of --preset's random init");
    if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    if (in.empty() == preset.empty()) throw InputError("give exactly one of an input checkpoint or --preset");
    // Read and validate everything first; the writers are atomic, so a failure leaves no output.
    Checkpoint ck;
    if (!preset.empty()) {
      Llama m(llama_config_preset(preset));
      m->init_random(seed);
      ck = checkpoint_from_llama(m);
    } else {
      ck = checkpoint_read(in);
    }
    checkpoint_write(out, ck);
    std::fprintf(stderr, "pac-convert: wrote %s (%s)\n", out.c_str(), llama_config_describe(ck.config).c_str());
    return 0;
  });
}
