// Test helpers for the engine: where the fixtures are, golden file loading,
// tensor comparison and status assertions.
//
// Fixtures come from SDFARM_SHARED_DIR (a CMake cache variable, default
// ../shared). A missing fixture is a failure, never a skip.
#ifndef SDFARM_TESTS_ENGINE_GOLDEN_H_
#define SDFARM_TESTS_ENGINE_GOLDEN_H_

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "worker/engine/status.h"

namespace sdfarm::testing {

// Absolute path of `rel` under the shared fixture folder. Records a test
// failure (naming the variable to set) when it does not exist.
std::string SharedPath(const std::string& rel);
inline std::string ModelPath(const std::string& name) { return SharedPath("models/" + name); }
inline std::string GoldenPath(const std::string& rel) { return SharedPath("golden/" + rel); }

// Every tensor of a golden .safetensors file (owned CPU copies). Fails the
// test (and returns an empty map) when the file is missing or unreadable.
std::map<std::string, at::Tensor> LoadGolden(const std::string& rel);
// The file's __metadata__ block.
std::map<std::string, std::string> LoadGoldenMetadata(const std::string& rel);

// max |a - b| over all elements, in float64. Shapes must match (else +inf).
double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b);
// max |a - b| / max |b|: the relative error used for the scheduler cases.
double MaxRelDiff(const at::Tensor& a, const at::Tensor& b);

// A fresh, empty temporary folder, removed at process exit.
std::string MakeTempDir();

// ASSERT_OK / EXPECT_OK take a Status or a StatusOr. By value: the argument
// is often a temporary that dies before the assertion reads the status.
inline engine::Status StatusOf(const engine::Status& s) { return s; }
template <typename T>
engine::Status StatusOf(const engine::StatusOr<T>& s) { return s.status(); }

}  // namespace sdfarm::testing

#define ASSERT_OK(expr)                                                        \
  do {                                                                         \
    const ::sdfarm::engine::Status sdfarm_st_ = ::sdfarm::testing::StatusOf(expr);                \
    ASSERT_TRUE(sdfarm_st_.ok()) << sdfarm_st_.ToString();                     \
  } while (0)

#define EXPECT_OK(expr)                                                        \
  do {                                                                         \
    const ::sdfarm::engine::Status sdfarm_st_ = ::sdfarm::testing::StatusOf(expr);                \
    EXPECT_TRUE(sdfarm_st_.ok()) << sdfarm_st_.ToString();                     \
  } while (0)

#define SDFARM_TEST_CONCAT_INNER_(a, b) a##b
#define SDFARM_TEST_CONCAT_(a, b) SDFARM_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(SDFARM_TEST_CONCAT_(sdfarm_so_, __LINE__), lhs, rexpr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, rexpr)             \
  auto tmp = (rexpr);                                          \
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();            \
  lhs = std::move(tmp).value()

#endif  // SDFARM_TESTS_ENGINE_GOLDEN_H_
