// CPU attention in query slices: the same result as the whole score matrix
// (float tolerance), slice sizes that respect the bound, and the networks
// still matching diffusers when every attention is sliced.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/layers.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

// Sets the process's CPU slice bound for one scope.
class ScopedSliceBytes {
 public:
  explicit ScopedSliceBytes(int64_t bytes) : previous_(SetCpuAttentionSliceBytes(bytes)) {}
  ~ScopedSliceBytes() { SetCpuAttentionSliceBytes(previous_); }

 private:
  int64_t previous_;
};

TEST(AttentionSlicing, SliceRowsRespectTheBound) {
  // 16 x 4096 x 4096 float scores (1 GiB) under the default bound of 16 MiB:
  // 64 query rows of 16 x 4096 floats (256 KiB each).
  EXPECT_EQ(AttentionSliceRows(16, 4096, 4096, 4, kCpuAttentionSliceBytes), 64);
  EXPECT_LE(64 * 16 * 4096 * 4, kCpuAttentionSliceBytes);
  EXPECT_EQ(AttentionSliceRows(16, 4096, 4096, 2, kCpuAttentionSliceBytes), 128);  // fp16/bf16 scores
  // Fits whole: no slicing.
  EXPECT_EQ(AttentionSliceRows(16, 64, 64, 4, kCpuAttentionSliceBytes), 64);
  EXPECT_EQ(AttentionSliceRows(2, 1000, 77, 4, 2 * 1000 * 77 * 4), 1000);
  // One row more than fits: two slices.
  EXPECT_EQ(AttentionSliceRows(2, 1000, 77, 4, 2 * 1000 * 77 * 4 - 1), 999);
  // A single row larger than the bound still makes progress.
  EXPECT_EQ(AttentionSliceRows(16, 4096, 4096, 4, 1), 1);
  // No bound.
  EXPECT_EQ(AttentionSliceRows(16, 4096, 4096, 4, 0), 4096);
}

TEST(AttentionSlicing, SlicedEqualsWholeWithinFloatTolerance) {
  c10::InferenceMode guard;
  at::manual_seed(5);
  struct Case {
    int64_t batch, lq, lk, heads, dim;
    bool causal, upcast;
  };
  for (const Case& c : {Case{2, 300, 300, 8, 64, false, false},   // self-attention
                        Case{2, 300, 154, 8, 64, false, false},   // cross-attention, two prompt chunks
                        Case{1, 257, 257, 1, 32, false, true},    // the VAE's single head, upcast softmax
                        Case{3, 77, 77, 4, 32, true, false}}) {   // CLIP's causal mask
    at::Tensor q = at::randn({c.batch, c.lq, c.dim});
    at::Tensor k = at::randn({c.batch, c.lk, c.dim});
    at::Tensor v = at::randn({c.batch, c.lk, c.dim});
    AttentionOptions opts;
    opts.heads = c.heads;
    opts.causal = c.causal;
    opts.upcast = c.upcast;
    at::Tensor whole, sliced;
    {
      ScopedSliceBytes never(0);
      whole = MultiHeadAttention(q, k, v, opts);
    }
    // About 7 query rows per slice: a ragged last slice too.
    const int64_t bound = 7 * c.batch * c.heads * c.lk * 4;
    ASSERT_LT(AttentionSliceRows(c.batch * c.heads, c.lq, c.lk, 4, bound), c.lq);
    {
      ScopedSliceBytes tiny(bound);
      sliced = MultiHeadAttention(q, k, v, opts);
    }
    ASSERT_EQ(sliced.sizes(), whole.sizes());
    EXPECT_LE(MaxAbsDiff(sliced, whole), 1e-5) << c.lq << "x" << c.lk << (c.causal ? " causal" : "");
  }
}

// Every attention of the UNet and of the VAE in slices of a few rows: the
// golden outputs of diffusers still hold (max abs error 1e-4).
TEST(AttentionSlicing, NetworksMatchDiffusersWhenEveryAttentionIsSliced) {
  c10::InferenceMode guard;
  ScopedSliceBytes tiny(std::getenv("NOSLICE") ? 0 : 4096);
  auto g = LoadGolden("tiny-sd/unet.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto unet, LoadUNet(ModelPath("tiny-sd/unet"), at::kCPU, at::kFloat));
  const at::Tensor& ctx = g["encoder_hidden_states"];
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_a"].reshape({}), ctx), g["out_a"]), 1e-4);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample_odd"], g["timestep_odd"].reshape({}), ctx), g["out_odd"]), 1e-4);

  auto gv = LoadGolden("tiny-sd/vae.safetensors");
  ASSERT_FALSE(gv.empty());
  ASSERT_OK_AND_ASSIGN(auto vae, LoadVae(ModelPath("tiny-sd/vae"), at::kCPU, at::kFloat));
  EXPECT_LE(MaxAbsDiff(vae->Decode(gv["latents"]), gv["decoded"]), 1e-4);
  EXPECT_LE(MaxAbsDiff(vae->Encode(gv["image"]).mean, gv["enc_mean"]), 1e-4);
}

}  // namespace
}  // namespace sdfarm::engine
