// PNG reading and writing for the engine: input images and masks in, rendered
// images (with their generation parameters as text chunks) out.
//
// Decoding reproduces what diffusers users get from Pillow: DecodePng(bytes, 3)
// returns exactly the bytes of `Image.open(f).convert("RGB")`, DecodePng(bytes,
// 1) those of `.convert("L")`, for every PNG flavour (gray, gray+alpha,
// palette, RGB, RGBA; 1/2/4/8/16 bits; interlaced or not):
//   - alpha (an alpha channel or tRNS) is dropped, never composited;
//   - gray is replicated to RGB; 1/2/4-bit gray is scaled to 0..255;
//   - palette indices past the end of PLTE read as black (Pillow >= 10.1
//     zero-fills its palette, PR #7289; older Pillow gave gray (i, i, i));
//   - 16-bit RGB, RGBA and gray+alpha keep the high byte, but 16-bit gray
//     (Pillow mode "I;16") is *clipped*: min(v, 255), so 0x1234 -> 255;
//   - L from colour is Pillow's integer ITU-R 601-2 luma
//     (R*19595 + G*38470 + B*7471 + 0x8000) >> 16; gray sources pass through.
// Gamma, sRGB/iCCP and sBIT chunks are ignored, as Pillow ignores them.
//
//   ASSIGN_OR_RETURN(Image init, ReadPng(path, /*want_channels=*/3));
//   RETURN_IF_ERROR(WritePngAtomic(out_path, image, {{"parameters", infotext}}));
//
// Every function is safe on hostile input: corrupt, truncated or non-PNG data
// gives InvalidArgument (DataLoss when the data simply ends early), never a
// crash or an exception; images wider or taller than kMaxPngDimension are
// refused before any pixel memory is allocated.
#ifndef SDFARM_WORKER_ENGINE_PNG_IO_H_
#define SDFARM_WORKER_ENGINE_PNG_IO_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

// Largest width or height read or written. 16384^2 RGB is 768 MiB; anything
// larger is far beyond what the pipelines can process and is almost
// certainly a decompression bomb.
inline constexpr int kMaxPngDimension = 16384;
// Cap on any single pixel buffer the decoder allocates (the output, or the
// whole-image buffer an interlaced PNG needs), and on the file size read.
inline constexpr uint64_t kMaxPngBufferBytes = uint64_t{1} << 30;

// An 8-bit image, row-major HWC: pixel (x, y) channel c is
// pixels[(y * width + x) * channels + c].
struct Image {
  int width = 0, height = 0, channels = 0;  // channels: 1 (L) or 3 (RGB)
  std::vector<uint8_t> pixels;
};

// Decodes a PNG held in memory and converts it to RGB (want_channels == 3) or
// L (want_channels == 1) exactly as Pillow's convert() does (see above).
// Only the image data is needed: a file cut off after its last IDAT chunk
// (no IEND) decodes, as it does with Pillow.
StatusOr<Image> DecodePng(std::string_view bytes, int want_channels);
// DecodePng on a file's contents. NotFound when the file does not exist;
// error messages start with the path.
StatusOr<Image> ReadPng(const std::string& path, int want_channels);

// Encodes an 8-bit RGB or L image, with the given text chunks written before
// the image data in the given order. Keys are UTF-8 but must be valid PNG
// keywords (1-79 Latin-1 printable characters, no leading, trailing or double
// spaces); values are UTF-8 without NUL. As Pillow's PngInfo.add_text (what
// AUTOMATIC1111 uses to store "parameters") does, a value that fits in
// Latin-1 goes into a tEXt chunk (Latin-1 bytes) and any other value into an
// uncompressed iTXt chunk (UTF-8, empty language tag), so Pillow-based tools
// read back exactly the original string. compression_level is zlib's 0..9.
StatusOr<std::string> EncodePng(const Image& image,
                                const std::vector<std::pair<std::string, std::string>>& text = {},
                                int compression_level = 6);

// EncodePng, then writes `path + ".tmp"`, fsyncs it and renames it over
// `path`, so readers see either the old file or the complete new one. The
// temporary file never survives a failure. Two writers of the same path at
// the same time are not supported (they share the temporary name).
Status WritePngAtomic(const std::string& path, const Image& image,
                      const std::vector<std::pair<std::string, std::string>>& text = {});

// Every tEXt, zTXt and iTXt chunk of the file (before and after the image
// data), in file order, as (keyword, text) converted to UTF-8: tEXt/zTXt are
// Latin-1, iTXt is UTF-8 (invalid sequences become U+FFFD). The image data is
// decoded too (to reach trailing chunks), so a corrupt image is an error.
// Text chunks over libpng's 8 MB chunk limit are skipped.
StatusOr<std::vector<std::pair<std::string, std::string>>> ReadPngText(const std::string& path);
// ReadPngText on a PNG held in memory (which also proves it decodes).
StatusOr<std::vector<std::pair<std::string, std::string>>> DecodePngText(const std::string& bytes);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_PNG_IO_H_
