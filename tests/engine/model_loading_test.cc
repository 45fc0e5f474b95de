// Loading real checkpoints: every tensor in a file must be used and every
// parameter filled; anything else is an error that names the tensor. Also the
// quirks real hub files have (legacy VAE attention names, the text encoder's
// position_ids buffer, *.fp16.safetensors variants, fp16/bf16 weights).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

TensorList ReadAllOrdered(const std::string& path) {
  TensorList out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  if (!file.ok()) return out;
  for (const auto& info : (*file)->tensors()) out.emplace_back(info.name, (*file)->Get(info.name)->clone());
  return out;
}

// A copy of tiny-sd's `component` folder whose weights went through `edit`.
std::string EditedComponent(const std::string& component, const std::string& weights_name,
                            const std::function<void(TensorList&)>& edit,
                            const std::string& out_name = "") {
  const std::string dir = MakeTempDir() + "/" + component;
  fs::create_directories(dir);
  fs::copy_file(ModelPath("tiny-sd/" + component + "/config.json"), dir + "/config.json");
  TensorList tensors = ReadAllOrdered(ModelPath("tiny-sd/" + component + "/" + weights_name));
  edit(tensors);
  EXPECT_OK(WriteSafetensors(dir + "/" + (out_name.empty() ? weights_name : out_name), tensors));
  return dir;
}

TEST(ModelLoading, WrongShapeNamesTheTensor) {
  const std::string dir = EditedComponent("unet", "diffusion_pytorch_model.safetensors", [](TensorList& t) {
    for (auto& [name, tensor] : t) {
      if (name == "down_blocks.0.resnets.0.conv1.weight") tensor = at::zeros({32, 32, 3, 1});
    }
  });
  auto unet = LoadUNet(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(unet.ok());
  EXPECT_EQ(unet.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unet.status().message().find("down_blocks.0.resnets.0.conv1.weight"), std::string::npos)
      << unet.status().ToString();
  EXPECT_NE(unet.status().message().find("[32, 32, 3, 3]"), std::string::npos) << unet.status().ToString();
}

TEST(ModelLoading, MissingTensorNamesTheTensor) {
  const std::string dir = EditedComponent("unet", "diffusion_pytorch_model.safetensors", [](TensorList& t) {
    std::erase_if(t, [](const auto& p) { return p.first == "mid_block.attentions.0.proj_out.bias"; });
  });
  auto unet = LoadUNet(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(unet.ok());
  EXPECT_EQ(unet.status().code(), StatusCode::kNotFound);
  EXPECT_NE(unet.status().message().find("mid_block.attentions.0.proj_out.bias"), std::string::npos)
      << unet.status().ToString();
}

TEST(ModelLoading, UnusedTensorNamesTheTensor) {
  const std::string dir = EditedComponent("vae", "diffusion_pytorch_model.safetensors", [](TensorList& t) {
    t.emplace_back("decoder.extra_layer.weight", at::ones({3}));
  });
  auto vae = LoadVae(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(vae.ok());
  EXPECT_NE(vae.status().message().find("decoder.extra_layer.weight"), std::string::npos) << vae.status().ToString();
}

TEST(ModelLoading, UnknownBlockTypeIsAClearError) {
  const std::string dir = MakeTempDir();
  std::ifstream in(ModelPath("tiny-sd/unet/config.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  j["down_block_types"][1] = "SimpleCrossAttnDownBlock2D";
  std::ofstream(dir + "/config.json") << j.dump();
  fs::copy_file(ModelPath("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
                dir + "/diffusion_pytorch_model.safetensors");
  auto unet = LoadUNet(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(unet.ok());
  EXPECT_EQ(unet.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(unet.status().message().find("SimpleCrossAttnDownBlock2D"), std::string::npos)
      << unet.status().ToString();
}

TEST(ModelLoading, TruncatedWeightsFileIsAnErrorNotACrash) {
  const std::string dir = MakeTempDir();
  fs::copy_file(ModelPath("tiny-sd/vae/config.json"), dir + "/config.json");
  std::ifstream in(ModelPath("tiny-sd/vae/diffusion_pytorch_model.safetensors"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(dir + "/diffusion_pytorch_model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  auto vae = LoadVae(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(vae.ok());
  EXPECT_EQ(vae.status().code(), StatusCode::kDataLoss) << vae.status().ToString();
}

TEST(ModelLoading, NoWeightsFileSaysWhatWasExpected) {
  const std::string dir = MakeTempDir();
  fs::copy_file(ModelPath("tiny-sd/vae/config.json"), dir + "/config.json");
  std::ofstream(dir + "/diffusion_pytorch_model.bin") << "pickle";
  auto vae = LoadVae(dir, at::kCPU, at::kFloat);
  ASSERT_FALSE(vae.ok());
  EXPECT_EQ(vae.status().code(), StatusCode::kNotFound);
  EXPECT_NE(vae.status().message().find("convert them to safetensors"), std::string::npos) << vae.status().ToString();
}

TEST(ModelLoading, LegacyVaeAttentionNamesLoadTheSameModel) {
  c10::InferenceMode guard;
  const std::map<std::string, std::string> legacy = {
      {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};
  const std::string dir = EditedComponent("vae", "diffusion_pytorch_model.safetensors", [&](TensorList& t) {
    for (auto& [name, tensor] : t) {
      for (const auto& [now, old] : legacy) {
        const std::string key = ".attentions.0." + now + ".";
        auto pos = name.find(key);
        if (pos != std::string::npos) {
          name = name.substr(0, pos) + ".attentions.0." + old + "." + name.substr(pos + key.size());
          // Pre-0.14 conversions stored the projections as 1x1 convolutions.
          if (tensor.dim() == 2 && old == "query") tensor = tensor.unsqueeze(-1).unsqueeze(-1);
        }
      }
    }
  });
  ASSERT_OK_AND_ASSIGN(auto vae, LoadVae(dir, at::kCPU, at::kFloat));
  auto g = LoadGolden("tiny-sd/vae.safetensors");
  EXPECT_LE(MaxAbsDiff(vae->Decode(g["latents"]), g["decoded"]), 1e-4);
}

TEST(ModelLoading, TextEncoderPositionIdsBufferIsAccepted) {
  c10::InferenceMode guard;
  const std::string dir = EditedComponent("text_encoder", "model.safetensors", [](TensorList& t) {
    t.emplace_back("text_model.embeddings.position_ids", at::arange(77, at::kLong).unsqueeze(0));
  });
  ASSERT_OK_AND_ASSIGN(auto te, LoadTextEncoder(dir, at::kCPU, at::kFloat));
  auto g = LoadGolden("tiny-sd/text_encoder.safetensors");
  EXPECT_LE(MaxAbsDiff(te->Forward(g["input_ids"]).last_hidden_state, g["last_hidden_state"]), 1e-4);
}

TEST(ModelLoading, Fp16VariantFileAndHalfWeightsLoad) {
  c10::InferenceMode guard;
  // Only the *.fp16.safetensors variant, holding fp16 weights, as hub repos ship them.
  const std::string dir = EditedComponent(
      "vae", "diffusion_pytorch_model.safetensors",
      [](TensorList& t) { for (auto& [name, tensor] : t) tensor = tensor.to(at::kHalf); },
      "diffusion_pytorch_model.fp16.safetensors");
  ASSERT_OK_AND_ASSIGN(auto vae, LoadVae(dir, at::kCPU, at::kFloat));
  auto g = LoadGolden("tiny-sd/vae.safetensors");
  // fp16 weights cost precision, but the model is the same.
  EXPECT_LE(MaxAbsDiff(vae->Decode(g["latents"]), g["decoded"]), 2e-2);
}

TEST(ModelLoading, Bf16WeightsLoadIntoABf16Model) {
  c10::InferenceMode guard;
  const std::string dir = EditedComponent("text_encoder", "model.safetensors", [](TensorList& t) {
    for (auto& [name, tensor] : t) tensor = tensor.to(at::kBFloat16);
  });
  ASSERT_OK_AND_ASSIGN(auto te, LoadTextEncoder(dir, at::kCPU, at::kBFloat16));
  auto g = LoadGolden("tiny-sd/text_encoder.safetensors");
  at::Tensor out = te->Forward(g["input_ids"]).last_hidden_state;
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_LE(MaxAbsDiff(out.to(at::kFloat), g["last_hidden_state"]), 0.25);
}

}  // namespace
}  // namespace sdfarm::engine

namespace sdfarm::engine {
namespace {

TEST(StatusFromException, OutOfMemoryIsResourceExhaustedAndBacktracesAreCut) {
  const Status cuda = StatusFromException(
      std::runtime_error("CUDA out of memory. Tried to allocate 2.00 GiB\nException raised from malloc at x.cpp:1"),
      "render");
  EXPECT_EQ(cuda.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(cuda.message().find("Exception raised from"), std::string::npos) << cuda.message();
  const Status cpu = StatusFromException(
      std::runtime_error("[enforce fail at alloc_cpu.cpp:75] DefaultCPUAllocator: can't allocate memory"), "render");
  EXPECT_EQ(cpu.code(), StatusCode::kResourceExhausted);
  const Status other = StatusFromException(std::runtime_error("shape mismatch"), "render");
  EXPECT_EQ(other.code(), StatusCode::kInternal);
  EXPECT_EQ(other.message(), "render: shape mismatch");
}

}  // namespace
}  // namespace sdfarm::engine
