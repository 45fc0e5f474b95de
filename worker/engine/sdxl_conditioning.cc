// SDXL prompts and micro-conditioning to the UNet's inputs (see sdxl_conditioning.h).
#include "worker/engine/sdxl_conditioning.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace sdfarm::engine {

std::array<double, 6> SdxlTimeIds(const MicroConditioning& micro, int width, int height) {
  const MicroConditioning m = EffectiveMicro(micro, width, height);
  return {static_cast<double>(m.original_height), static_cast<double>(m.original_width),
          static_cast<double>(m.crop_top),        static_cast<double>(m.crop_left),
          static_cast<double>(m.target_height),   static_cast<double>(m.target_width)};
}

TextConditioning EncodeTextSdxl(const StableDiffusionModel& m, const RenderRequest& r, int width, int height,
                                const at::Device& dev) {
  TextConditioning out;
  for (const auto& it : r.items) out.cfg = out.cfg || it.guidance_scale > 1.0;
  const int64_t batch = static_cast<int64_t>(r.items.size());

  // Distinct (text for encoder 1, text for encoder 2) pairs, each encoded once.
  std::map<std::pair<std::string, std::string>, int64_t> row_of;
  std::vector<at::Tensor> ids_1, ids_2;
  std::vector<int> dropped_of;
  auto row = [&](const std::string& a, const std::string& b) {
    auto found = row_of.find({a, b});
    if (found == row_of.end()) {
      ClipTokenizer::Padded p1 = m.tokenizer->EncodePadded(a);
      ClipTokenizer::Padded p2 = m.tokenizer_2->EncodePadded(b);
      ids_1.push_back(at::tensor(p1.ids, at::kLong));
      ids_2.push_back(at::tensor(p2.ids, at::kLong));
      dropped_of.push_back(std::max(p1.dropped_tokens, p2.dropped_tokens));
      found = row_of.emplace(std::make_pair(a, b), static_cast<int64_t>(ids_1.size()) - 1).first;
    }
    return found->second;
  };
  constexpr int64_t kZeros = -1;
  std::vector<int64_t> cond_rows, uncond_rows;
  out.dropped_tokens.resize(batch);
  for (int64_t i = 0; i < batch; ++i) {
    const RenderItem& it = r.items[i];
    const EffectiveSdxl e = EffectiveSdxlSettings(it, width, height);  // prompt_2 defaults as diffusers'
    const int64_t c = row(it.prompt, e.prompt_2);
    cond_rows.push_back(c);
    out.dropped_tokens[i] = dropped_of[c];
    if (!out.cfg) continue;
    const bool none = it.negative_prompt.empty() && !it.empty_negative_is_text;
    if (none && m.force_zeros_for_empty_prompt) {
      uncond_rows.push_back(kZeros);
    } else {
      uncond_rows.push_back(row(it.negative_prompt, e.negative_prompt_2));
    }
  }

  const ClipTextModel& te1 = *m.text_encoder;
  const ClipTextModel& te2 = *m.text_encoder_2;
  at::Tensor h1 = te1.LayerOutput(at::stack(ids_1).to(dev), te1.config().num_hidden_layers - 1);
  ClipTextModel::Output o2 = te2.Forward(at::stack(ids_2).to(dev), /*output_hidden_states=*/true);
  at::Tensor h2 = o2.hidden_states[o2.hidden_states.size() - 2];
  at::Tensor context = at::cat({h1, h2.to(h1.scalar_type())}, -1);  // [unique, 77, hidden_1 + hidden_2]
  at::Tensor pooled = o2.text_embeds;                                 // [unique, projection_dim]
  // One more row of zeros for the "no negative prompt" rows.
  const int64_t zeros_row = context.size(0);
  context = at::cat({context, at::zeros_like(context.slice(0, 0, 1))}, 0);
  pooled = at::cat({pooled, at::zeros_like(pooled.slice(0, 0, 1))}, 0);

  std::vector<int64_t> rows;
  if (out.cfg) {
    for (int64_t u : uncond_rows) rows.push_back(u == kZeros ? zeros_row : u);
  }
  rows.insert(rows.end(), cond_rows.begin(), cond_rows.end());
  at::Tensor index = at::tensor(rows, at::kLong).to(dev);
  out.groups.push_back({at::arange(static_cast<int64_t>(rows.size()), at::TensorOptions().dtype(at::kLong).device(dev)),
                        context.index_select(0, index)});
  out.text_embeds = pooled.index_select(0, index);

  std::vector<double> ids;
  auto add = [&ids](const std::array<double, 6>& v) { ids.insert(ids.end(), v.begin(), v.end()); };
  if (out.cfg) {
    for (const RenderItem& it : r.items) {
      add(SdxlTimeIds(HasNegativeMicroConditioning(it) ? it.negative_micro : it.micro, width, height));
    }
  }
  for (const RenderItem& it : r.items) add(SdxlTimeIds(it.micro, width, height));
  out.time_ids = at::tensor(ids, at::kDouble)
                     .view({static_cast<int64_t>(rows.size()), 6})
                     .to(dev, context.scalar_type());
  return out;
}

}  // namespace sdfarm::engine
