// SDXL's conditioning, as StableDiffusionXLPipeline (diffusers 0.21.4)
// computes it: the UNet context, the pooled text embedding and the six
// micro-conditioning values of every UNet batch row.
//
//  - Each text is tokenized by both tokenizers (tokenizer pads with
//    <|endoftext|>, tokenizer_2 with "!"); the context is the penultimate
//    hidden states of both encoders (no final layer norm) concatenated on the
//    feature axis; the pooled embedding is text_encoder_2's text_embeds
//    (final-norm state at the first EOS, times text_projection).
//  - Encoder 2 reads prompt_2 (default: prompt); negatives likewise.
//  - With guidance and no negative prompt (RenderItem::empty_negative_is_text
//    false) on a force_zeros_for_empty_prompt model, the negative context
//    and pooled rows are zeros.
//  - time_ids = (original h, w, crop top, left, target h, w); defaults: the
//    render size and (0, 0). The negative rows use the negative_* values only
//    when both negative sizes are given. Unlike diffusers 0.21.4, whose
//    `cat([neg, pos]).repeat(B)` pairs the rows wrongly when B > 1 and the
//    negative values differ, each row gets its own item's values, so an image
//    does not depend on its batch (identical for B = 1 and whenever negative
//    sizes are not given).
#ifndef SDFARM_WORKER_ENGINE_SDXL_CONDITIONING_H_
#define SDFARM_WORKER_ENGINE_SDXL_CONDITIONING_H_

#include <ATen/ATen.h>

#include <array>

#include "worker/engine/engine.h"
#include "worker/engine/model_loader.h"
#include "worker/engine/sdxl_defaults.h"
#include "worker/engine/text_conditioning.h"

namespace sdfarm::engine {

// Rows as EncodeText's (negatives of every item first with guidance, then the
// prompts), one group; fills text_embeds and time_ids. `width` x `height`:
// the render size (the micro-conditioning default). Needs m.sdxl().
TextConditioning EncodeTextSdxl(const StableDiffusionModel& m, const RenderRequest& request, int width, int height,
                                const at::Device& device);

// The 6 values of add_time_ids for one image: (original h, w, crop top,
// left, target h, w), zero sizes replaced by the render size
// (EffectiveMicro, sdxl_defaults.h).
std::array<double, 6> SdxlTimeIds(const MicroConditioning& micro, int width, int height);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SDXL_CONDITIONING_H_
