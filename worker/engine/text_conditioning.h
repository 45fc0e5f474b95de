// The text side of a render: the prompts and negative prompts of a request
// turned into the text-encoder embeddings the UNet attends to, one row per
// UNet batch row.
//
//   TextConditioning text = EncodeText(*model.tokenizer, *model.text_encoder, request, device);
//   at::Tensor eps = RunUNetWithText(*model.unet, x, t, text);
//
// Rows are in diffusers' order: with classifier-free guidance (any item with
// guidance > 1) the negative prompts of all items first, then the prompts;
// without it, only the prompts. Each distinct text is encoded once.
//
// Without prompt chunking every row is CLIP's 77-token window: longer prompts
// are truncated (dropped_tokens says by how much), exactly as diffusers'
// encode_prompt. With RenderRequest::prompt_chunking a prompt becomes
// AUTOMATIC1111's chunks (prompt_chunks.h), each encoded on its own (clip skip
// applies per chunk) and concatenated along the sequence axis: [77 * k,
// hidden]. An item's prompt and negative prompt are padded with empty chunks
// to the same count, as A1111 does. Unlike A1111, which pads a whole batch to
// its longest prompt, the count is per item, so an image does not depend on
// its batch; rows of different lengths then form separate groups, and the
// UNet runs once per group.
#ifndef SDFARM_WORKER_ENGINE_TEXT_CONDITIONING_H_
#define SDFARM_WORKER_ENGINE_TEXT_CONDITIONING_H_

#include <ATen/ATen.h>

#include <vector>

#include "worker/engine/clip_tokenizer.h"
#include "worker/engine/engine.h"
#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"

namespace sdfarm::engine {

struct TextConditioning {
  bool cfg = false;  // the UNet batch holds the negative rows first, then the prompt rows
  struct Group {
    at::Tensor rows;     // int64 UNet batch rows, ascending, on the device
    at::Tensor context;  // [rows, 77 * chunks, hidden]
  };
  // Rows grouped by context length, shortest first. Exactly one group, in
  // row order, without prompt chunking (or when every row has as many chunks).
  std::vector<Group> groups;
  std::vector<int> dropped_tokens;  // per item: prompt tokens cut at the 77-token window (0 with chunking)
  // SDXL (sdxl_conditioning.h): the UNet's added conditioning, one row per
  // UNet batch row; undefined for SD 1.x/2.x.
  at::Tensor text_embeds;  // [rows, projection_dim]
  at::Tensor time_ids;     // [rows, 6]
};

TextConditioning EncodeText(const ClipTokenizer& tokenizer, const ClipTextModel& text_encoder,
                            const RenderRequest& request, const at::Device& device);

// unet.Forward over the batch `x` (rows as in `text`), one call per group.
at::Tensor RunUNetWithText(const UNet& unet, const at::Tensor& x, const at::Tensor& timestep,
                           const TextConditioning& text);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_TEXT_CONDITIONING_H_
