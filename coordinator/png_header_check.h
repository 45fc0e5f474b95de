// Checks a reported image's PNG header before anything decodes it: a worker
// (honest or not) must not make the coordinator spend seconds of CPU or
// gigabytes of memory on one image. Only the 8-byte signature and the IHDR
// chunk (always the first chunk) are read, plus the total size:
//
//   RETURN_IF_ERROR(CheckPngHeader(image.png(), {.width = 512, .height = 512}));
//   ... only then DecodePngText / DecodePng ...
//
// A worker encodes 8-bit RGB (engine/png_io.h: EncodePng); anything else,
// another size than the job's, or a file larger than any honest encoding of
// that size is refused with INVALID_ARGUMENT naming what is wrong.
#ifndef SDFARM_COORDINATOR_PNG_HEADER_CHECK_H_
#define SDFARM_COORDINATOR_PNG_HEADER_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace sdfarm::coordinator {

struct ExpectedPng {
  int64_t width = 0, height = 0;
};

// The largest PNG accepted for an image of this size: the raw 8-bit RGB
// pixels (one filter byte per row), plus 1/64 of them for deflate's worst
// case (stored blocks: 5 bytes per 64 KiB) and IDAT chunk headers, plus 1 MiB
// for the text chunk (the A1111 parameters: two prompts of 4,000 code
// points) and any other chunk.
size_t MaxPngBytes(int64_t width, int64_t height);

// OK when `png` starts with the PNG signature and an IHDR of exactly
// expected.width x expected.height, bit depth 8, colour type 2 (RGB), and is
// at most MaxPngBytes(...) long. Reads at most 33 bytes.
absl::Status CheckPngHeader(std::string_view png, const ExpectedPng& expected);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_PNG_HEADER_CHECK_H_
