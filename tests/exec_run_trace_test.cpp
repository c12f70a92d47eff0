// pac-run's Chrome trace (exec/run_trace.h): worker events laid out like pac-sim's trace.
#include <gtest/gtest.h>

#include "exec/run_trace.h"

using namespace pac;

TEST(ExecRunTrace, LaysOutEventsLikeTheSimulator) {
  // Devices a, b; origin 1e6 us. Device a: compute F mb0 at 1.000100e6 for 50 us, a send
  // to b at +150 us for 20 us, a cache write; device b: a wait and a send to an unknown
  // peer. Expected: ts relative to the origin (100, 150, ...), compute on pid 1 tid 0,
  // storage on pid 1 tid n + 0 = 2, send a -> b on pid 2 tid 0 * 2 + 1 = 1, the unknown
  // peer's send on b's own track (pid 1 tid 1), thread names for every used track.
  RunTrace t({"a", "b"}, 1e6);
  json ra = {{"events",
              {{{"cat", "compute"}, {"name", "F mb0"}, {"ts", 1e6 + 100}, {"dur", 50}},
               {{"cat", "send"}, {"name", "activation mb0"}, {"ts", 1e6 + 150}, {"dur", 20}, {"peer", "b"}},
               {{"cat", "storage"}, {"name", "cache write mb0"}, {"ts", 1e6 + 170}, {"dur", 5}}}}};
  json rb = {{"events",
              {{{"cat", "wait"}, {"name", "wait activation mb0"}, {"ts", 1e6}, {"dur", 170}},
               {{"cat", "send"}, {"name", "gradient mb0"}, {"ts", 1e6 + 300}, {"dur", 10}, {"peer", "zz"}}}}};
  t.add_result(0, 7, ra);
  t.add_result(1, 7, rb);
  t.add_result(1, 8, json::object());  // a result without events adds nothing
  ASSERT_EQ(t.events().size(), 5u);
  json j = json::parse(t.to_chrome_json());
  EXPECT_EQ(j["otherData"]["source"], "pac-run");
  EXPECT_EQ(j["otherData"]["truncated"], false);
  std::map<std::string, json> by_name;
  std::map<std::pair<int, int>, std::string> thread_names;
  for (const json& e : j["traceEvents"]) {
    if (e["ph"] == "X") by_name[e["name"].get<std::string>()] = e;
    if (e["ph"] == "M" && e["name"] == "thread_name")
      thread_names[{e["pid"].get<int>(), e["tid"].get<int>()}] = e["args"]["name"].get<std::string>();
  }
  ASSERT_EQ(by_name.size(), 5u);
  EXPECT_DOUBLE_EQ(by_name["F mb0"]["ts"].get<double>(), 100.0);
  EXPECT_DOUBLE_EQ(by_name["F mb0"]["dur"].get<double>(), 50.0);
  EXPECT_EQ(by_name["F mb0"]["pid"], 1);
  EXPECT_EQ(by_name["F mb0"]["tid"], 0);
  EXPECT_EQ(by_name["F mb0"]["args"]["step"], 7);
  EXPECT_EQ(by_name["cache write mb0"]["tid"], 2);
  EXPECT_EQ(by_name["activation mb0"]["pid"], 2);
  EXPECT_EQ(by_name["activation mb0"]["tid"], 1);
  EXPECT_DOUBLE_EQ(by_name["wait activation mb0"]["ts"].get<double>(), 0.0);
  EXPECT_EQ(by_name["gradient mb0"]["pid"], 1);
  EXPECT_EQ(by_name["gradient mb0"]["tid"], 1);
  EXPECT_EQ((thread_names[{1, 0}]), "a");
  EXPECT_EQ((thread_names[{1, 1}]), "b");
  EXPECT_EQ((thread_names[{1, 2}]), "a storage");
  EXPECT_EQ((thread_names[{2, 1}]), "a -> b");
  EXPECT_EQ(thread_names.count({1, 3}), 0u) << "b did no storage I/O: no track";
}

TEST(ExecRunTrace, StopsAtTheEventCapAndSaysSo) {
  RunTrace t({"a"}, 0, 2);
  json r = {{"events", json::array()}};
  for (int i = 0; i < 3; i++) r["events"].push_back({{"cat", "compute"}, {"name", "x"}, {"ts", i}, {"dur", 1}});
  t.add_result(0, 0, r);
  EXPECT_EQ(t.events().size(), 2u);
  EXPECT_TRUE(t.truncated());
  EXPECT_EQ(json::parse(t.to_chrome_json())["otherData"]["truncated"], true);
}
