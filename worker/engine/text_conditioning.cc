// Prompts to the UNet's text context (see text_conditioning.h).
#include "worker/engine/text_conditioning.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "worker/engine/prompt_chunks.h"

namespace sdfarm::engine {
namespace {

bool AnyGuidance(const RenderRequest& r) {
  for (const auto& it : r.items) {
    if (it.guidance_scale > 1.0) return true;
  }
  return false;
}

// One 77-token row per text, truncated: diffusers' encode_prompt.
TextConditioning EncodeTruncated(const ClipTokenizer& tokenizer, const ClipTextModel& text_encoder,
                                 const RenderRequest& r, const at::Device& dev) {
  TextConditioning out;
  out.cfg = AnyGuidance(r);
  const int64_t batch = static_cast<int64_t>(r.items.size());
  struct Row {
    int64_t index;
    int dropped_tokens;
  };
  std::map<std::string, Row> row_of;
  std::vector<at::Tensor> id_rows;
  auto row = [&](const std::string& text, int* dropped) {
    auto found = row_of.find(text);
    if (found == row_of.end()) {
      ClipTokenizer::Padded p = tokenizer.EncodePadded(text);
      id_rows.push_back(at::tensor(p.ids, at::kLong));
      found = row_of.emplace(text, Row{static_cast<int64_t>(id_rows.size()) - 1, p.dropped_tokens}).first;
    }
    if (dropped) *dropped = found->second.dropped_tokens;
    return found->second.index;
  };
  std::vector<int64_t> cond_rows, uncond_rows;
  out.dropped_tokens.resize(batch);
  for (int64_t i = 0; i < batch; ++i) {
    cond_rows.push_back(row(r.items[i].prompt, &out.dropped_tokens[i]));
    if (out.cfg) uncond_rows.push_back(row(r.items[i].negative_prompt, nullptr));
  }
  at::Tensor ids = at::stack(id_rows).to(dev);
  at::Tensor unique_embeds = text_encoder.Encode(ids, r.clip_skip);
  auto gather = [&](const std::vector<int64_t>& rows) {
    return unique_embeds.index_select(0, at::tensor(rows, at::kLong).to(dev));
  };
  at::Tensor context = out.cfg ? at::cat({gather(uncond_rows), gather(cond_rows)}, 0) : gather(cond_rows);
  out.groups.push_back({at::arange(context.size(0), at::TensorOptions().dtype(at::kLong).device(dev)), context});
  return out;
}

// A1111's chunks. Each distinct text is chunked and encoded once, in the
// order EncodeTruncated encodes its texts, so that prompts that fit one
// window give the very same text-encoder batch (and bit-identical context).
TextConditioning EncodeChunked(const ClipTokenizer& tokenizer, const ClipTextModel& text_encoder,
                               const RenderRequest& r, const at::Device& dev) {
  TextConditioning out;
  out.cfg = AnyGuidance(r);
  const int64_t batch = static_cast<int64_t>(r.items.size());
  out.dropped_tokens.assign(batch, 0);

  std::vector<at::Tensor> chunk_ids;                      // encoder batch rows
  std::map<std::string, std::vector<int64_t>> chunks_of;  // text -> its chunks' rows
  auto chunks = [&](const std::string& text) -> std::vector<int64_t> {
    auto found = chunks_of.find(text);
    if (found == chunks_of.end()) {
      std::vector<int64_t> rows;
      for (const auto& ids : ChunkPromptIds(tokenizer, text)) {
        rows.push_back(static_cast<int64_t>(chunk_ids.size()));
        chunk_ids.push_back(at::tensor(ids, at::kLong));
      }
      found = chunks_of.emplace(text, std::move(rows)).first;
    }
    return found->second;
  };

  // The chunk rows of every UNet row.
  const int64_t rows = out.cfg ? 2 * batch : batch;
  std::vector<std::vector<int64_t>> row_chunks(rows);
  for (int64_t i = 0; i < batch; ++i) {
    const RenderItem& item = r.items[i];
    std::vector<int64_t> cond = chunks(item.prompt);
    if (!out.cfg) {
      row_chunks[i] = std::move(cond);
      continue;
    }
    std::vector<int64_t> uncond = chunks(item.negative_prompt);
    if (item.guidance_scale > 1.0) {
      const size_t k = std::max(cond.size(), uncond.size());
      if (cond.size() < k || uncond.size() < k) {
        const int64_t empty = chunks("")[0];  // EmptyChunk: the ids of an empty prompt
        cond.resize(k, empty);
        uncond.resize(k, empty);
      }
    } else {
      // This item's negative row is computed but never used (the image takes
      // the prompt branch alone): give it the prompt's length so that it
      // joins the prompt row's group instead of costing a UNet call.
      uncond = cond;
    }
    row_chunks[i] = std::move(uncond);
    row_chunks[batch + i] = std::move(cond);
  }

  at::Tensor embeds = text_encoder.Encode(at::stack(chunk_ids).to(dev), r.clip_skip);  // [chunks, 77, hidden]
  const int64_t window = embeds.size(1), hidden = embeds.size(2);
  std::map<size_t, std::pair<std::vector<int64_t>, std::vector<int64_t>>> by_count;  // k -> rows, chunk indices
  for (int64_t row = 0; row < rows; ++row) {
    auto& [group_rows, group_chunks] = by_count[row_chunks[row].size()];
    group_rows.push_back(row);
    group_chunks.insert(group_chunks.end(), row_chunks[row].begin(), row_chunks[row].end());
  }
  for (const auto& [k, group] : by_count) {
    const int64_t n = static_cast<int64_t>(group.first.size());
    at::Tensor context = embeds.index_select(0, at::tensor(group.second, at::kLong).to(dev))
                             .view({n, static_cast<int64_t>(k) * window, hidden});
    out.groups.push_back({at::tensor(group.first, at::kLong).to(dev), context});
  }
  return out;
}

}  // namespace

TextConditioning EncodeText(const ClipTokenizer& tokenizer, const ClipTextModel& text_encoder,
                            const RenderRequest& request, const at::Device& device) {
  return request.prompt_chunking ? EncodeChunked(tokenizer, text_encoder, request, device)
                                 : EncodeTruncated(tokenizer, text_encoder, request, device);
}

at::Tensor RunUNetWithText(const UNet& unet, const at::Tensor& x, const at::Tensor& timestep,
                           const TextConditioning& text) {
  const bool added = text.text_embeds.defined();
  AddedConditioning all;
  if (added) all = {text.text_embeds, text.time_ids};
  if (text.groups.size() == 1) return unet.Forward(x, timestep, text.groups[0].context, added ? &all : nullptr);
  at::Tensor out;
  for (const auto& group : text.groups) {
    AddedConditioning rows;
    if (added) rows = {text.text_embeds.index_select(0, group.rows), text.time_ids.index_select(0, group.rows)};
    at::Tensor part =
        unet.Forward(x.index_select(0, group.rows), timestep, group.context, added ? &rows : nullptr);
    if (!out.defined()) {
      std::vector<int64_t> shape = part.sizes().vec();
      shape[0] = x.size(0);
      out = at::empty(shape, part.options());
    }
    out.index_copy_(0, group.rows, part);
  }
  return out;
}

}  // namespace sdfarm::engine
