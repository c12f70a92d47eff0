// JsonIn: every error names file, JSON path and expectation (the bad-input contract).
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"

#include <unistd.h>
#include <functional>

using namespace pac;


TEST(JsonIn, ReadsNestedValuesWithRanges) {
  auto doc = JsonIn::from(json::parse(R"({"net":{"bw":100.5,"n":3,"kind":"shared"},"xs":[1,2]})"), "s.json");
  EXPECT_DOUBLE_EQ(doc.at("net").number("bw", 0), 100.5);
  EXPECT_EQ(doc.at("net").integer("n", 1, 8), 3);
  EXPECT_EQ(doc.at("net").choice("kind", {"shared", "switched"}), "shared");
  EXPECT_EQ(doc.at("xs").items().size(), 2u);
  EXPECT_EQ(doc.at("xs").at(1).as_int(), 2);
  EXPECT_EQ(doc.number_or("missing", 7.0), 7.0);
}

TEST(JsonIn, ErrorsNameFilePathAndExpectation) {
  auto doc = JsonIn::from(json::parse(R"({"net":{"bw":-5,"kind":"mesh"},"xs":[1,"a"]})"), "home.json");
  EXPECT_EQ(input_error([&] { doc.at("net").number("bw", 0); }),
            "home.json: $.net.bw: expected a number >= 0, got the number -5");
  EXPECT_EQ(input_error([&] { doc.at("net").choice("kind", {"shared", "switched"}); }),
            "home.json: $.net.kind: expected one of \"shared\", \"switched\", got the string \"mesh\"");
  EXPECT_EQ(input_error([&] { doc.at("xs").at(1).as_int(); }),
            "home.json: $.xs[1]: expected an integer, got the string \"a\"");
  EXPECT_EQ(input_error([&] { doc.at("cluster"); }), "home.json: $.cluster: missing (required)");
  EXPECT_EQ(input_error([&] { doc.at("net").check_keys({"bw"}); }),
            "home.json: $.net.kind: unknown field (expected one of: bw)");
}

TEST(JsonIn, ParseErrorNamesFileAndOffset) {
  std::string path = ::testing::TempDir() + "/broken.json";
  file_write_atomic(path, std::string("{\"a\": [1, 2"));
  std::string msg = input_error([&] { JsonIn::load_file(path); });
  EXPECT_NE(msg.find(path + ": not valid JSON at byte"), std::string::npos) << msg;
  EXPECT_NE(input_error([&] { JsonIn::load_file(path + ".missing"); }).find("cannot open"), std::string::npos);
}

TEST(Fs, AtomicWriteReplacesWholeFileAndLeavesNoTemp) {
  std::string dir = ::testing::TempDir() + "/pac_fs_test";
  std::string path = dir + "/sub/out.txt";
  file_write_atomic(path, std::string("first"));
  file_write_atomic(path, std::string("second"));
  EXPECT_EQ(file_read(path), "second");
  EXPECT_FALSE(file_exists(path + ".tmp." + std::to_string(::getpid())));
}
