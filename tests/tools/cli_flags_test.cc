// The flag parser and the seed-list syntax that sdfarm's programs share.
#include "worker/tools/cli_flags.h"

#include <gtest/gtest.h>

namespace sdfarm::tools {
namespace {

StatusOr<CliFlags> Parse(std::vector<std::string> args) {
  CliFlags f("prog", "summary");
  f.Add("model", "DIR", "model");
  f.Add("steps", "N", "steps", "30");
  f.Add("prompt", "TEXT", "prompt", std::nullopt, /*repeatable=*/true);
  f.AddBool("quiet", "quiet");
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  if (auto s = f.Parse(static_cast<int>(argv.size()), argv.data()); !s.ok()) return s;
  return f;
}

TEST(CliFlags, ValuesDefaultsRepeatsAndBooleans) {
  auto f = Parse({"--model", "m", "--prompt=a", "--prompt", "b", "--quiet"});
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->Get("model"), "m");
  EXPECT_EQ(f->Get("steps"), "30");
  EXPECT_FALSE(f->Has("steps"));
  EXPECT_EQ(f->GetAll("prompt"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(f->GetBool("quiet"));
  EXPECT_EQ(*f->GetInt("steps", 1, 1000), 30);
  auto g = Parse({"--no-quiet", "--steps", "1001"});
  ASSERT_TRUE(g.ok());
  EXPECT_FALSE(g->GetBool("quiet"));
  EXPECT_FALSE(g->GetInt("steps", 1, 1000).ok());
}

TEST(CliFlags, MistakesAreClearErrors) {
  EXPECT_NE(Parse({"--bogus", "1"}).status().message().find("unknown flag --bogus"), std::string::npos);
  EXPECT_NE(Parse({"--model"}).status().message().find("needs a value"), std::string::npos);
  EXPECT_NE(Parse({"--model", "a", "--model", "b"}).status().message().find("twice"), std::string::npos);
  EXPECT_NE(Parse({"stray"}).status().message().find("unexpected argument"), std::string::npos);
  auto f = Parse({"--steps", "12abc"});
  ASSERT_TRUE(f.ok());
  EXPECT_NE(f->GetInt("steps", 1, 1000).status().message().find("integer"), std::string::npos);
}

TEST(SeedList, RangesAndListsExpandInOrder) {
  EXPECT_EQ(*ParseSeedList("0-3,42, 7"), (std::vector<uint64_t>{0, 1, 2, 3, 42, 7}));
  EXPECT_EQ(*ParseSeedList("18446744073709551615"), (std::vector<uint64_t>{18446744073709551615ull}));
  EXPECT_EQ(ParseSeedList("18446744073709551614-18446744073709551615")->size(), 2u);
  for (const char* bad : {"", "5-1", "a", "-3", "1,,2", "18446744073709551616", "0-2000000"}) {
    EXPECT_FALSE(ParseSeedList(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace sdfarm::tools
