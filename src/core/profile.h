// Device profiles (profiles/devices/*.json) and model configs (profiles/models/*.json):
// reading, validating and writing them. docs/profile-format.md documents both formats.
#pragma once
#include <string>

#include "src/common/json_in.h"
#include "src/core/scenario.h"

namespace pac {

DeviceProfile device_profile_from_json(const JsonIn& j);
json device_profile_to_json(const DeviceProfile& p);
ModelConfig model_config_from_json(const JsonIn& j);
json model_config_to_json(const ModelConfig& m);

// The folder holding devices/ and models/: `explicit_dir` when given, else
// $PAC_PROFILES_DIR, else "<dir of `near_file`>/../profiles" when it exists, else
// "profiles" relative to the working directory.
std::string profiles_dir_resolve(const std::string& explicit_dir, const std::string& near_file);

// Resolves a reference to a profile: an inline object, a name ("jetson-nano-4gb" ->
// <profiles_dir>/devices/jetson-nano-4gb.json) or a path ending in .json (relative to
// the referencing file's folder). Errors name the referencing JSON path.
DeviceProfile device_profile_resolve(const JsonIn& ref, const std::string& profiles_dir);
ModelConfig model_config_resolve(const JsonIn& ref, const std::string& profiles_dir);

// The co-run slowdown of `p` (DeviceProfile::corun_slowdown) for a task of `samples`
// per micro-batch: linear between the measured sizes, the nearest one's outside them;
// 1 when none was measured.
double corun_slowdown_at(const DeviceProfile& p, double samples);

// Effective FLOP/s of `p` for work of `kind` at `micro_batch` samples in `dtype`.
// Kinds: "layer" (backbone forward, incl. LoRA/adapter modules), "side" (the side
// network's forward), "layer_bwd" / "side_bwd" (their backward). Lookup: the calibrated
// "<kind>@<mb>" entry, else "<kind>", else (for *_bwd) the forward kind's chain, else
// the dtype's effective rate, else fp32's. Never 0 for a validated profile.
double device_rate(const DeviceProfile& p, const std::string& dtype, const std::string& kind, int micro_batch);

// Whether `p` was calibrated for `kind` ("<kind>" or any "<kind>@<mb>" entry).
bool profile_has_kind(const DeviceProfile& p, const std::string& kind);

// Bytes of one value of `dtype` ("fp32" 4, "fp16"/"bf16" 2).
int dtype_bytes(const std::string& dtype);

}  // namespace pac
