// Scenario loading: the paper's setting resolves, bad input names file, path and
// expectation, the resolved form round-trips, link rates follow the network kind.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "tests/test_util.h"
#include "src/core/profile.h"
#include "src/core/scenario.h"

using namespace pac;

static const std::string kSrc = PAC_SOURCE_DIR;
static const std::string kProfiles = kSrc + "/profiles";


static json base_doc() {
  return json::parse(R"({
    "name": "t", "model": "t5-base",
    "data": {"samples": 100, "seq_len": 128, "mini_batch": 16, "micro_batches": 4},
    "epochs": 2,
    "cluster": {"devices": [{"id": "nano", "profile": "jetson-nano-4gb", "count": 2},
                            {"id": "tx2", "profile": "jetson-tx2"}]},
    "network": {"kind": "switched", "bandwidth_mbps": 1000, "latency_ms": 0.5,
                "links": [{"a": "nano0", "b": "tx2", "bandwidth_mbps": 50}]}
  })");
}

static Scenario load_doc(const json& doc) { return scenario_from_json(JsonIn::from(doc, "s.json"), kProfiles); }

TEST(Scenario, PaperSettingResolves) {
  Scenario s = scenario_load(kSrc + "/scenarios/paper-bart-large-mrpc.json", kProfiles);
  EXPECT_EQ(s.model.name, "bart-large");
  EXPECT_EQ(s.model.total_layers(), 24);
  ASSERT_EQ(s.devices.size(), 8u);
  EXPECT_EQ(s.devices[7].id, "nano7");
  EXPECT_EQ(s.devices[3].profile.name, "jetson-nano-4gb");
  EXPECT_EQ(s.data.samples, 3668);
  EXPECT_EQ(s.epochs, 3);
  EXPECT_DOUBLE_EQ(s.network.bandwidth_bps, 1e9);
  EXPECT_EQ(s.method.kind, "parallel_adapters");
}

TEST(Scenario, LinkRatesFollowOverridesNicsAndNetwork) {
  Scenario s = load_doc(base_doc());
  // Override: 50 Mbps between nano0 and tx2, in either direction.
  EXPECT_DOUBLE_EQ(link_bandwidth_bps(s, 0, 2), 50e6);
  EXPECT_DOUBLE_EQ(link_bandwidth_bps(s, 2, 0), 50e6);
  // Otherwise min(network 1000 Mbps, both NICs 1 Gbps) = 1e9.
  EXPECT_DOUBLE_EQ(link_bandwidth_bps(s, 0, 1), 1e9);
  // Latency: network 0.5 ms + the larger NIC latency (0.1 ms).
  EXPECT_NEAR(link_latency_s(s, 0, 1), 0.0006, 1e-12);
  json doc = base_doc();
  doc["network"] = {{"kind", "shared"}, {"bandwidth_mbps", 2000}};
  // Shared medium of 2000 Mbps: a lone transfer is limited by the 1 Gbps NICs.
  EXPECT_DOUBLE_EQ(link_bandwidth_bps(load_doc(doc), 0, 1), 1e9);
}

// Calibrated runtime costs (bench/calibrate_overhead.py): every message pays both
// ends' message_overhead_s on top of the wire's latency, override or not; the fields
// survive the resolved form and a negative one is refused by name.
TEST(Scenario, MessagesPayTheRuntimeCostOfBothEnds) {
  json nano = json::parse(file_read(kProfiles + "/devices/jetson-nano-4gb.json"));
  json tx2 = json::parse(file_read(kProfiles + "/devices/jetson-tx2.json"));
  nano["message_overhead_s"] = 0.002;
  nano["task_overhead_s"] = 0.003;
  nano["step_overhead_s"] = 0.0021;
  tx2["message_overhead_s"] = 0.001;
  json doc = base_doc();
  doc["cluster"]["devices"][0]["profile"] = nano;
  doc["cluster"]["devices"][1]["profile"] = tx2;
  Scenario s = load_doc(doc);
  EXPECT_DOUBLE_EQ(s.devices[0].profile.task_overhead_s, 0.003);
  EXPECT_DOUBLE_EQ(s.devices[2].profile.task_overhead_s, 0);
  // nano0-nano1: network 0.5 ms + NIC 0.1 ms + 2 + 2 ms.
  EXPECT_NEAR(link_latency_s(s, 0, 1), 0.0006 + 0.004, 1e-12);
  // nano1-tx2: 0.6 ms + 2 + 1 ms; nano0-tx2 (a `links` override, 0.5 ms) + 2 + 1 ms.
  EXPECT_NEAR(link_latency_s(s, 1, 2), 0.0006 + 0.003, 1e-12);
  EXPECT_NEAR(link_latency_s(s, 0, 2), s.network.links[0].latency_s + 0.003, 1e-12);
  Scenario back = scenario_from_json(JsonIn::from(scenario_to_json(s), "resolved.json"), kProfiles);
  EXPECT_DOUBLE_EQ(back.devices[1].profile.message_overhead_s, 0.002);
  EXPECT_DOUBLE_EQ(back.devices[1].profile.task_overhead_s, 0.003);
  EXPECT_DOUBLE_EQ(back.devices[1].profile.step_overhead_s, 0.0021);
  EXPECT_EQ(back.devices[2].profile.step_overhead_s, 0);
  // The first use of each phase and the switch's local work (calibrate_overhead.py's
  // cached plan): read, kept through the resolved form, written only when set.
  json orin = nano;
  orin["first_step_bytes_per_s"] = 1.6e8;
  orin["cached_first_step_bytes_per_s"] = 2.6e8;
  orin["switch_local_s"] = 0.08;
  doc["cluster"]["devices"][0]["profile"] = orin;
  Scenario f = load_doc(doc);
  Scenario fb = scenario_from_json(JsonIn::from(scenario_to_json(f), "resolved.json"), kProfiles);
  EXPECT_DOUBLE_EQ(fb.devices[0].profile.first_step_bytes_per_s, 1.6e8);
  EXPECT_DOUBLE_EQ(fb.devices[0].profile.cached_first_step_bytes_per_s, 2.6e8);
  EXPECT_DOUBLE_EQ(fb.devices[0].profile.switch_local_s, 0.08);
  EXPECT_EQ(fb.devices[2].profile.switch_local_s, 0);
  EXPECT_FALSE(device_profile_to_json(fb.devices[2].profile).contains("first_step_bytes_per_s"));
  orin["switch_local_s"] = -1;
  doc["cluster"]["devices"][0]["profile"] = orin;
  std::string bad = input_error([&] { load_doc(doc); });
  EXPECT_NE(bad.find("s.json: $.cluster.devices[0].profile.switch_local_s: expected"), std::string::npos) << bad;
  // Compute jitter (the 4-device calibration plan): kept through the resolved form;
  // above 0.5 the multiplier 1 + cv sqrt(3) (2u - 1) could reach 0, so it is refused.
  json jit = nano;
  jit["compute_jitter_cv"] = 0.12;
  doc["cluster"]["devices"][0]["profile"] = jit;
  Scenario jb = scenario_from_json(JsonIn::from(scenario_to_json(load_doc(doc)), "resolved.json"), kProfiles);
  EXPECT_DOUBLE_EQ(jb.devices[0].profile.compute_jitter_cv, 0.12);
  EXPECT_FALSE(device_profile_to_json(jb.devices[2].profile).contains("compute_jitter_cv"));
  jit["compute_jitter_cv"] = 0.7;
  doc["cluster"]["devices"][0]["profile"] = jit;
  std::string bad_cv = input_error([&] { load_doc(doc); });
  EXPECT_NE(bad_cv.find("s.json: $.cluster.devices[0].profile.compute_jitter_cv: expected"), std::string::npos)
      << bad_cv;
  // Co-run slowdown (pac-profile --corun): kept through the resolved form, looked up
  // by micro-batch (linear between sizes, the nearest outside); a factor below 1 or a
  // key that is not a micro-batch size is refused with the field's path.
  json co = nano;
  co["corun_slowdown"] = {{"1", 1.2}, {"4", 1.05}};
  doc["cluster"]["devices"][0]["profile"] = co;
  Scenario cb = scenario_from_json(JsonIn::from(scenario_to_json(load_doc(doc)), "resolved.json"), kProfiles);
  EXPECT_EQ(cb.devices[0].profile.corun_slowdown, (std::map<int, double>{{1, 1.2}, {4, 1.05}}));
  EXPECT_DOUBLE_EQ(corun_slowdown_at(cb.devices[0].profile, 2), 1.2 + (1.05 - 1.2) / 3);
  EXPECT_DOUBLE_EQ(corun_slowdown_at(cb.devices[0].profile, 0.5), 1.2);
  EXPECT_DOUBLE_EQ(corun_slowdown_at(cb.devices[0].profile, 16), 1.05);
  EXPECT_DOUBLE_EQ(corun_slowdown_at(cb.devices[2].profile, 1), 1.0);
  EXPECT_FALSE(device_profile_to_json(cb.devices[2].profile).contains("corun_slowdown"));
  co["corun_slowdown"] = {{"1", 0.9}};
  doc["cluster"]["devices"][0]["profile"] = co;
  std::string bad_co = input_error([&] { load_doc(doc); });
  EXPECT_NE(bad_co.find("s.json: $.cluster.devices[0].profile.corun_slowdown.1: expected"), std::string::npos) << bad_co;
  co["corun_slowdown"] = {{"mb1", 1.1}};
  doc["cluster"]["devices"][0]["profile"] = co;
  bad_co = input_error([&] { load_doc(doc); });
  EXPECT_NE(bad_co.find("corun_slowdown.mb1: expected a micro-batch size"), std::string::npos) << bad_co;
  nano["task_overhead_s"] = -0.001;
  doc["cluster"]["devices"][0]["profile"] = nano;
  std::string err = input_error([&] { load_doc(doc); });
  EXPECT_NE(err.find("s.json: $.cluster.devices[0].profile.task_overhead_s: expected"), std::string::npos) << err;
}

// The cache's fixed costs per record (pac-profile cache_measure) survive the resolved
// form, are written only when set (a datasheet profile's plan does not change), and a
// negative one is refused by name.
TEST(Scenario, CacheRecordCostsRoundTrip) {
  json nano = json::parse(file_read(kProfiles + "/devices/jetson-nano-4gb.json"));
  nano["storage_write_record_s"] = 0.0003;
  nano["storage_read_record_s"] = 0.00001;
  json doc = base_doc();
  doc["cluster"]["devices"][0]["profile"] = nano;
  Scenario s = load_doc(doc);
  EXPECT_DOUBLE_EQ(s.devices[0].profile.storage_write_record_s, 0.0003);
  EXPECT_DOUBLE_EQ(s.devices[0].profile.storage_read_record_s, 0.00001);
  EXPECT_EQ(s.devices[2].profile.storage_write_record_s, 0);
  json resolved = scenario_to_json(s);
  Scenario back = scenario_from_json(JsonIn::from(resolved, "resolved.json"), kProfiles);
  EXPECT_DOUBLE_EQ(back.devices[1].profile.storage_write_record_s, 0.0003);
  EXPECT_DOUBLE_EQ(back.devices[1].profile.storage_read_record_s, 0.00001);
  EXPECT_FALSE(device_profile_to_json(s.devices[2].profile).contains("storage_write_record_s"));
  nano["storage_read_record_s"] = -1;
  doc["cluster"]["devices"][0]["profile"] = nano;
  std::string err = input_error([&] { load_doc(doc); });
  EXPECT_NE(err.find("s.json: $.cluster.devices[0].profile.storage_read_record_s: expected"), std::string::npos) << err;
}

TEST(Scenario, RoundTripsThroughItsResolvedForm) {
  Scenario s = load_doc(base_doc());
  json once = scenario_to_json(s);
  Scenario back = scenario_from_json(JsonIn::from(once, "resolved.json"), kProfiles);
  EXPECT_EQ(scenario_to_json(back), once);
  EXPECT_EQ(back.devices[1].id, "nano1");
  EXPECT_DOUBLE_EQ(back.network.links[0].bandwidth_bps, 50e6);
  // CFS phases: spread by default (not written), aligned on request (written back).
  EXPECT_FALSE(s.cfs_phases_aligned);
  EXPECT_FALSE(once["cluster"].contains("cfs_phases"));
  json doc = base_doc();
  doc["cluster"]["cfs_phases"] = "aligned";
  Scenario al = load_doc(doc);
  EXPECT_TRUE(al.cfs_phases_aligned);
  json al_json = scenario_to_json(al);
  EXPECT_EQ(al_json["cluster"]["cfs_phases"], "aligned");
  EXPECT_TRUE(scenario_from_json(JsonIn::from(al_json, "resolved.json"), kProfiles).cfs_phases_aligned);
}

TEST(Scenario, BadInputNamesFilePathAndExpectation) {
  json doc = base_doc();
  doc["cluster"]["devices"][1]["profile"] = "jetson-tx9";
  EXPECT_NE(input_error([&] { load_doc(doc); })
                .find("s.json: $.cluster.devices[1].profile: unknown device profile \"jetson-tx9\""),
            std::string::npos);

  doc = base_doc();
  doc["network"]["bandwidth_mbps"] = -5;
  EXPECT_EQ(input_error([&] { load_doc(doc); }),
            "s.json: $.network.bandwidth_mbps: expected a number > 0 (megabits per second), got the number -5");

  doc = base_doc();
  doc["stages"] = 30;  // t5-base has 24 layers
  EXPECT_EQ(input_error([&] { load_doc(doc); }), "s.json: $.stages: expected at most the model's 24 layers, got 30");

  doc = base_doc();
  doc["cluster"]["cfs_phases"] = "random";
  EXPECT_NE(input_error([&] { load_doc(doc); }).find("$.cluster.cfs_phases"), std::string::npos);

  doc = base_doc();
  doc["network"]["bandwith_mbps"] = 5;
  EXPECT_NE(input_error([&] { load_doc(doc); }).find("$.network.bandwith_mbps: unknown field"), std::string::npos);

  doc = base_doc();
  doc["method"] = {{"kind", "lora"}, {"cache", true}};
  EXPECT_NE(input_error([&] { load_doc(doc); }).find("$.method.cache: the activation cache needs kind"), std::string::npos);

  doc = base_doc();
  doc["data"]["micro_batches"] = 32;
  EXPECT_NE(input_error([&] { load_doc(doc); }).find("$.data.micro_batches: expected an integer in [1, 16], got the number 32"), std::string::npos);

  doc = base_doc();
  doc["cluster"]["devices"][1]["id"] = "nano1";
  EXPECT_NE(input_error([&] { load_doc(doc); }).find("duplicate device id \"nano1\""), std::string::npos);

  doc = base_doc();
  doc["network"]["links"][0]["b"] = "phone";
  EXPECT_EQ(input_error([&] { load_doc(doc); }), "s.json: $.network.links[0].b: unknown device id \"phone\"");
}
