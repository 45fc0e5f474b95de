#include "worker/engine/blocks.h"

namespace sdfarm::engine {

void ResnetBlock2D::Declare(const ParamSet::Scope& s, int64_t in, int64_t out, std::optional<int64_t> temb_channels,
                            int64_t groups, double eps) {
  norm1.Declare(s.Sub("norm1"), groups, in, eps);
  conv1.Declare(s.Sub("conv1"), in, out, 3, 1, 1);
  if (temb_channels) {
    time_emb_proj.emplace();
    time_emb_proj->Declare(s.Sub("time_emb_proj"), *temb_channels, out);
  }
  norm2.Declare(s.Sub("norm2"), groups, out, eps);
  conv2.Declare(s.Sub("conv2"), out, out, 3, 1, 1);
  if (in != out) {
    conv_shortcut.emplace();
    conv_shortcut->Declare(s.Sub("conv_shortcut"), in, out, 1, 1, 0);
  }
}

at::Tensor ResnetBlock2D::operator()(const at::Tensor& x, const at::Tensor& temb) const {
  at::Tensor h = conv1(at::silu(norm1(x)));
  if (time_emb_proj && temb.defined()) {
    h = h + (*time_emb_proj)(at::silu(temb)).unsqueeze(-1).unsqueeze(-1);
  }
  h = conv2(at::silu(norm2(h)));
  at::Tensor shortcut = conv_shortcut ? (*conv_shortcut)(x) : x;
  at::Tensor out = shortcut + h;
  return output_scale_factor == 1.0 ? out : out / output_scale_factor;
}

void Downsample2D::Declare(const ParamSet::Scope& s, int64_t channels, int64_t padding_) {
  padding = padding_;
  conv.Declare(s.Sub("conv"), channels, channels, 3, 2, padding);
}

at::Tensor Downsample2D::operator()(const at::Tensor& x) const {
  if (padding == 0) return conv(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

void Upsample2D::Declare(const ParamSet::Scope& s, int64_t channels) {
  conv.Declare(s.Sub("conv"), channels, channels, 3, 1, 1);
}

at::Tensor Upsample2D::operator()(const at::Tensor& x, std::optional<std::vector<int64_t>> size) const {
  // diffusers upsamples bfloat16 in float32 (nearest is exact either way, but
  // some LibTorch builds lack the bf16 kernel).
  const bool via_float = x.scalar_type() == at::kBFloat16;
  at::Tensor in = via_float ? x.to(at::kFloat) : x;
  std::vector<int64_t> out_size = size ? *size : std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2};
  at::Tensor up = at::upsample_nearest2d(in.contiguous(), out_size);
  if (via_float) up = up.to(x.scalar_type());
  return conv(up);
}

void SpatialSelfAttention::Declare(const ParamSet::Scope& s, int64_t channels, int64_t head_dim, int64_t groups,
                                   double eps) {
  heads = std::max<int64_t>(1, channels / head_dim);
  group_norm.Declare(s.Sub("group_norm"), groups, channels, eps);
  to_q.Declare(s.Sub("to_q"), channels, channels);
  to_k.Declare(s.Sub("to_k"), channels, channels);
  to_v.Declare(s.Sub("to_v"), channels, channels);
  to_out.Declare(s.Sub("to_out").Sub(0), channels, channels);
  // Legacy names from checkpoints saved before diffusers 0.14. Slots were just
  // appended in this order: to_q w/b, to_k w/b, to_v w/b, to_out w/b.
  auto& slots = s.set()->slots();
  const size_t n = slots.size();
  const char* legacy[] = {"query", "key", "value", "proj_attn"};
  for (int i = 0; i < 4; ++i) {
    slots[n - 8 + 2 * i].aliases.push_back(s.Join(std::string(legacy[i]) + ".weight"));
    slots[n - 8 + 2 * i + 1].aliases.push_back(s.Join(std::string(legacy[i]) + ".bias"));
  }
}

at::Tensor SpatialSelfAttention::operator()(const at::Tensor& x) const {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor hs = group_norm(x).view({b, c, h * w}).transpose(1, 2);
  AttentionOptions opts;
  opts.heads = heads;
  opts.upcast = true;  // diffusers: upcast_softmax for the VAE attention
  at::Tensor out = to_out(MultiHeadAttention(to_q(hs), to_k(hs), to_v(hs), opts));
  out = out.transpose(-1, -2).reshape({b, c, h, w});
  return out + x;
}

void Transformer2DModel::Declare(const ParamSet::Scope& s, int64_t channels, const TransformerOptions& opts) {
  options = opts;
  const int64_t inner = channels;  // heads * (channels / heads)
  norm.Declare(s.Sub("norm"), opts.groups, channels, 1e-6);
  if (opts.use_linear_projection) {
    proj_in_linear.Declare(s.Sub("proj_in"), channels, inner);
  } else {
    proj_in_conv.Declare(s.Sub("proj_in"), channels, inner, 1, 1, 0);
  }
  blocks.resize(opts.layers);
  for (int64_t i = 0; i < opts.layers; ++i) {
    const auto b = s.Sub("transformer_blocks").Sub(static_cast<int>(i));
    Block& blk = blocks[i];
    blk.norm1.Declare(b.Sub("norm1"), inner, 1e-5);
    blk.attn1_q.Declare(b.Sub("attn1").Sub("to_q"), inner, inner, false);
    blk.attn1_k.Declare(b.Sub("attn1").Sub("to_k"), inner, inner, false);
    blk.attn1_v.Declare(b.Sub("attn1").Sub("to_v"), inner, inner, false);
    blk.attn1_out.Declare(b.Sub("attn1").Sub("to_out").Sub(0), inner, inner);
    blk.norm2.Declare(b.Sub("norm2"), inner, 1e-5);
    blk.attn2_q.Declare(b.Sub("attn2").Sub("to_q"), inner, inner, false);
    blk.attn2_k.Declare(b.Sub("attn2").Sub("to_k"), opts.cross_attention_dim, inner, false);
    blk.attn2_v.Declare(b.Sub("attn2").Sub("to_v"), opts.cross_attention_dim, inner, false);
    blk.attn2_out.Declare(b.Sub("attn2").Sub("to_out").Sub(0), inner, inner);
    blk.norm3.Declare(b.Sub("norm3"), inner, 1e-5);
    blk.ff_proj.Declare(b.Sub("ff").Sub("net").Sub(0).Sub("proj"), inner, inner * 4 * 2);
    blk.ff_out.Declare(b.Sub("ff").Sub("net").Sub(2), inner * 4, inner);
  }
  if (opts.use_linear_projection) {
    proj_out_linear.Declare(s.Sub("proj_out"), inner, channels);
  } else {
    proj_out_conv.Declare(s.Sub("proj_out"), inner, channels, 1, 1, 0);
  }
}

at::Tensor Transformer2DModel::operator()(const at::Tensor& x, const at::Tensor& context) const {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  at::Tensor hs = norm(x);
  int64_t inner;
  if (!options.use_linear_projection) {
    hs = proj_in_conv(hs);
    inner = hs.size(1);
    hs = hs.permute({0, 2, 3, 1}).reshape({b, h * w, inner});
  } else {
    inner = hs.size(1);
    hs = proj_in_linear(hs.permute({0, 2, 3, 1}).reshape({b, h * w, inner}));
  }
  AttentionOptions opts;
  opts.heads = options.heads;
  opts.upcast = options.upcast_attention;
  for (const Block& blk : blocks) {
    at::Tensor n = blk.norm1(hs);
    hs = blk.attn1_out(MultiHeadAttention(blk.attn1_q(n), blk.attn1_k(n), blk.attn1_v(n), opts)) + hs;
    n = blk.norm2(hs);
    hs = blk.attn2_out(MultiHeadAttention(blk.attn2_q(n), blk.attn2_k(context), blk.attn2_v(context), opts)) + hs;
    n = blk.norm3(hs);
    std::vector<at::Tensor> parts = blk.ff_proj(n).chunk(2, -1);
    hs = blk.ff_out(parts[0] * at::gelu(parts[1])) + hs;
  }
  if (!options.use_linear_projection) {
    hs = hs.reshape({b, h, w, inner}).permute({0, 3, 1, 2}).contiguous();
    hs = proj_out_conv(hs);
  } else {
    hs = proj_out_linear(hs);
    hs = hs.reshape({b, h, w, inner}).permute({0, 3, 1, 2}).contiguous();
  }
  return hs + x;
}

}  // namespace sdfarm::engine
