// Resizing 8-bit images exactly as Pillow's Image.resize(size,
// Image.LANCZOS) does, which is how diffusers (VaeImageProcessor,
// resample="lanczos"; the inpainting pipeline's prepare_mask_and_masked_image)
// and AUTOMATIC1111 bring an init image or mask to the size being rendered.
// Torch-free, so any program can use it.
//
//   Image fitted = ResizeLanczos(init, 512, 512);
//
// Pillow's algorithm (src/libImaging/Resample.c), reproduced step for step:
//  - separable: a horizontal pass into an 8-bit image, then a vertical pass;
//    a pass whose size does not change is skipped (same size: a copy);
//  - output pixel i samples at center = (i + 0.5) * scale, scale = in / out;
//    the Lanczos-3 kernel sinc(x) sinc(x / 3) on |x| < 3 is stretched by the
//    scale when downscaling (support 3 * max(scale, 1)), evaluated at
//    (j + 0.5 - center) / max(scale, 1) for the input pixels j in
//    [round(center - support), round(center + support)) clipped to the image,
//    and the weights are normalised to sum 1;
//  - weights become 22-bit fixed point (rounded half away from zero), sums
//    start at 0.5 in that scale, and results are floored and clipped to
//    0..255 (Pillow's round-to-nearest 8-bit output).
// Channels are independent (L and RGB; no alpha premultiplication needed).
#ifndef SDFARM_WORKER_ENGINE_IMAGE_RESIZE_H_
#define SDFARM_WORKER_ENGINE_IMAGE_RESIZE_H_

#include "worker/engine/png_io.h"

namespace sdfarm::engine {

// `image` (any channel count) resized to width x height (both >= 1).
Image ResizeLanczos(const Image& image, int width, int height);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_IMAGE_RESIZE_H_
