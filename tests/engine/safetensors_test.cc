// The safetensors reader validates every header field against the file and
// never hands out a tensor whose bytes are not all there.
#include "worker/engine/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::MakeTempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}
std::string RawFile(const std::string& header_json, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  const std::string path = MakeTempDir() + "/t.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> in = {
      {"f32", at::randn({2, 3})},
      {"f16", at::randn({4}).to(at::kHalf)},
      {"bf16", at::randn({1, 5}).to(at::kBFloat16)},
      {"i64", at::arange(7, at::kLong)},
      {"u8", at::arange(10, at::kByte).reshape({2, 5})},
      {"scalar", at::tensor(3.5f).reshape({})},
  };
  ASSERT_OK(WriteSafetensors(path, in, {{"format", "pt"}}));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->header().metadata.at("format"), "pt");
  EXPECT_EQ(file->tensors().size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_OK_AND_ASSIGN(at::Tensor got, file->Get(name));
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
}

TEST(Safetensors, ReadsTheSharedModelFiles) {
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(
      ::sdfarm::testing::ModelPath("tiny-sd/unet/diffusion_pytorch_model.safetensors")));
  const StTensorInfo* conv_in = file->Find("conv_in.weight");
  ASSERT_NE(conv_in, nullptr);
  EXPECT_EQ(conv_in->shape, (std::vector<int64_t>{32, 4, 3, 3}));
  ASSERT_OK_AND_ASSIGN(at::Tensor w, file->Get("conv_in.weight"));
  EXPECT_TRUE(at::isfinite(w).all().item<bool>());
}

TEST(Safetensors, TruncatedFileIsDataLossNamingTheTensor) {
  const std::string dir = MakeTempDir();
  ASSERT_OK(WriteSafetensors(dir + "/ok.safetensors", {{"a", at::ones({4})}, {"b", at::ones({64})}}));
  std::string bytes = ReadAll(dir + "/ok.safetensors");
  WriteAll(dir + "/cut.safetensors", bytes.substr(0, bytes.size() - 10));
  auto file = SafetensorsFile::Open(dir + "/cut.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(file.status().message().find("'b'"), std::string::npos) << file.status().ToString();
  EXPECT_NE(file.status().message().find("truncated"), std::string::npos);

  WriteAll(dir + "/tiny.safetensors", "abc");
  EXPECT_EQ(SafetensorsFile::Open(dir + "/tiny.safetensors").status().code(), StatusCode::kDataLoss);
  WriteAll(dir + "/headercut.safetensors", bytes.substr(0, 20));
  EXPECT_EQ(SafetensorsFile::Open(dir + "/headercut.safetensors").status().code(), StatusCode::kDataLoss);
}

TEST(Safetensors, HeaderWhoseOffsetsLieIsRejected) {
  const std::string dir = MakeTempDir();
  // Span does not match shape x dtype.
  WriteAll(dir + "/a.safetensors",
           RawFile(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16));
  auto a = SafetensorsFile::Open(dir + "/a.safetensors");
  EXPECT_EQ(a.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(a.status().message().find("'w'"), std::string::npos) << a.status().ToString();
  // Two tensors claiming the same bytes.
  WriteAll(dir + "/b.safetensors",
           RawFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));
  auto b = SafetensorsFile::Open(dir + "/b.safetensors");
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(b.status().message().find("overlaps"), std::string::npos) << b.status().ToString();
  // begin > end, unknown dtype, negative dims, huge header length, bad JSON.
  for (const std::string& header : {
           std::string(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})"),
           std::string(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})"),
           std::string(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})"),
           std::string(R"({"w":{"dtype":"F32","shape":[1]}})"),
           std::string(R"({"w": )"),
       }) {
    WriteAll(dir + "/c.safetensors", RawFile(header, 4));
    auto c = SafetensorsFile::Open(dir + "/c.safetensors");
    EXPECT_EQ(c.status().code(), StatusCode::kDataLoss) << header;
  }
  std::string huge(8, '\xff');
  WriteAll(dir + "/d.safetensors", huge + "{}");
  EXPECT_EQ(SafetensorsFile::Open(dir + "/d.safetensors").status().code(), StatusCode::kDataLoss);
}

TEST(Safetensors, MissingFileIsNotFound) {
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(), StatusCode::kNotFound);
}

TEST(Safetensors, TensorOutlivesTheFileObject) {
  const std::string path = MakeTempDir() + "/t.safetensors";
  ASSERT_OK(WriteSafetensors(path, {{"a", at::arange(16, at::kFloat)}}));
  at::Tensor kept;
  {
    ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
    ASSERT_OK_AND_ASSIGN(kept, file->Get("a"));
  }
  EXPECT_EQ(kept.sum().item<float>(), 120.0f);
}

}  // namespace
}  // namespace sdfarm::engine
