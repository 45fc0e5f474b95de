#include "worker/engine/png_io.h"
#include "worker/engine/unicode_data.h"

#include <fcntl.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "common/status_macros.h"

namespace sdfarm::engine {
namespace {

// ---------------------------------------------------------------------------
// libpng glue.
//
// libpng reports errors by longjmp()ing back to a setjmp() of the caller. A
// longjmp that crosses a C++ frame skips that frame's destructors, so it may
// only cross libpng's own frames, our callbacks (which own nothing and never
// let an exception out) and the small *Protected() functions below. Each of
// those does one libpng step under its own setjmp and has no locals at all:
// everything it touches lives in a plain state struct owned by its caller, a
// normal C++ function that only ever sees a bool. Values written to the state
// through the pointer are in memory, so they survive the longjmp.
// ---------------------------------------------------------------------------

constexpr size_t kMessageSize = 256;
// Largest ancillary chunk libpng will allocate for (text, mostly). libpng's
// default, spelled out: it bounds what a zTXt/iTXt decompression bomb costs.
constexpr png_alloc_size_t kMaxChunkBytes = 8000000;
// Pixel memory reserved up front for a non-interlaced image; the rest grows
// as rows actually decode, so a tiny file claiming a huge size costs little.
constexpr size_t kInitialReserveBytes = size_t{64} << 20;

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

// What the error and warning callbacks record; png's error_ptr points here.
struct PngMessages {
  char error[kMessageSize] = {};
  char last_warning[kMessageSize] = {};
};

void CopyMessage(char* dst, const char* src) {
  std::snprintf(dst, kMessageSize, "%s", src != nullptr ? src : "(no message)");
}

[[noreturn]] void OnPngError(png_structp png, png_const_charp message) {
  auto* messages = static_cast<PngMessages*>(png_get_error_ptr(png));
  if (messages != nullptr) CopyMessage(messages->error, message);
  png_longjmp(png, 1);
}

// libpng's default prints warnings to stderr; keep the last one instead, as
// it often explains the error that follows ("Image width is zero in IHDR"
// precedes "Invalid IHDR data").
void OnPngWarning(png_structp png, png_const_charp message) {
  auto* messages = static_cast<PngMessages*>(png_get_error_ptr(png));
  if (messages != nullptr) CopyMessage(messages->last_warning, message);
}

// ------------------------------- reading ----------------------------------

struct PngReadState {
  PngMessages messages;
  png_structp png = nullptr;
  png_infop info = nullptr;
  // The input.
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  bool truncated = false;  // set when libpng asked for bytes past the end
  bool keep_text = false;  // ReadPngText: let libpng parse text chunks
  // The image, as libpng delivers rows after the transforms we request
  // (only packing: one byte per sample below 8 bits; 16 bits stay big-endian).
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0, passes = 1;
  size_t rowbytes = 0;
  int channels = 0;
};

void ReadCallback(png_structp png, png_bytep out, size_t length) {
  auto* s = static_cast<PngReadState*>(png_get_io_ptr(png));
  if (length > s->size - s->pos) {
    s->truncated = true;
    png_error(png, "unexpected end of data");
  }
  std::memcpy(out, s->data + s->pos, length);
  s->pos += length;
}

bool ReadHeaderProtected(PngReadState* s) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_read_fn(s->png, s, ReadCallback);
  png_set_user_limits(s->png, kMaxPngDimension, kMaxPngDimension);
  png_set_chunk_malloc_max(s->png, kMaxChunkBytes);
  // Damaged ancillary chunks (bad CRC, duplicates, too much IDAT data) are
  // warnings, as Pillow shrugs them off too.
  png_set_benign_errors(s->png, 1);
  // Skip every ancillary chunk (iCCP, sBIT, gAMA, ...: Pillow's convert()
  // ignores them); libpng still reads IHDR, PLTE, tRNS, IDAT and IEND.
  png_set_keep_unknown_chunks(s->png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
  if (s->keep_text) {
    static const png_byte kTextChunks[] = "tEXt\0zTXt\0iTXt";  // 5-byte entries
    png_set_keep_unknown_chunks(s->png, PNG_HANDLE_CHUNK_AS_DEFAULT, kTextChunks, 3);
  }
  png_read_info(s->png, s->info);
  png_get_IHDR(s->png, s->info, &s->width, &s->height, &s->bit_depth, &s->color_type,
               &s->interlace, nullptr, nullptr);
  if (s->bit_depth < 8) png_set_packing(s->png);
  s->passes = png_set_interlace_handling(s->png);
  png_read_update_info(s->png, s->info);
  s->rowbytes = png_get_rowbytes(s->png, s->info);
  s->channels = png_get_channels(s->png, s->info);
  return true;
}

bool ReadRowProtected(PngReadState* s, png_bytep row) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_read_row(s->png, row, nullptr);
  return true;
}

bool ReadImageProtected(PngReadState* s, png_bytepp rows) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_read_image(s->png, rows);
  return true;
}

bool ReadEndProtected(PngReadState* s) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_read_end(s->png, s->info);
  return true;
}

// Owns the libpng read structs of a PngReadState.
class PngReader {
 public:
  PngReader(std::string_view bytes, bool keep_text) {
    s_.data = reinterpret_cast<const unsigned char*>(bytes.data());
    s_.size = bytes.size();
    s_.keep_text = keep_text;
  }
  ~PngReader() {
    if (s_.png != nullptr) png_destroy_read_struct(&s_.png, &s_.info, nullptr);
  }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;

  PngReadState* state() { return &s_; }

  Status Start() {
    s_.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s_.messages, OnPngError, OnPngWarning);
    if (s_.png == nullptr) return ResourceExhaustedError("cannot create a libpng reader");
    s_.info = png_create_info_struct(s_.png);
    if (s_.info == nullptr) return ResourceExhaustedError("cannot create a libpng info struct");
    if (!ReadHeaderProtected(&s_)) return Error();
    // libpng validated IHDR (bit depth against colour type, the size limits);
    // these checks only guard the row arithmetic below against surprises.
    const int bytes_per_sample = s_.bit_depth == 16 ? 2 : 1;
    if (s_.width == 0 || s_.height == 0 || s_.width > static_cast<png_uint_32>(kMaxPngDimension) ||
        s_.height > static_cast<png_uint_32>(kMaxPngDimension) || s_.channels < 1 || s_.channels > 4 ||
        s_.rowbytes != size_t{s_.width} * s_.channels * bytes_per_sample) {
      return InvalidArgumentError("unsupported PNG layout: " + std::to_string(s_.width) + "x" +
                                  std::to_string(s_.height) + ", colour type " + std::to_string(s_.color_type) +
                                  ", bit depth " + std::to_string(s_.bit_depth));
    }
    return OkStatus();
  }

  // The status for a failed *Protected() call.
  Status Error() const {
    if (s_.truncated) {
      return DataLossError("truncated PNG: the data ends after " + std::to_string(s_.size) +
                           " bytes, before the image is complete");
    }
    std::string message = std::string("corrupt PNG: ") + s_.messages.error;
    if (s_.messages.last_warning[0] != '\0') {
      message += std::string(" (after libpng warning: ") + s_.messages.last_warning + ")";
    }
    return InvalidArgumentError(std::move(message));
  }

 private:
  PngReadState s_;
};

// Checks the signature and the IHDR size before libpng sees the data, so that
// non-PNG input and absurd dimensions get messages that say so plainly.
Status CheckPngHeader(std::string_view bytes) {
  if (bytes.empty()) return InvalidArgumentError("empty input, not a PNG file");
  const size_t n = std::min(bytes.size(), sizeof(kPngSignature));
  if (std::memcmp(bytes.data(), kPngSignature, n) != 0) {
    return InvalidArgumentError("not a PNG file (bad signature)");
  }
  if (bytes.size() < sizeof(kPngSignature)) {
    return DataLossError("truncated PNG: only " + std::to_string(bytes.size()) + " bytes");
  }
  // The first chunk must be IHDR: length, type, width, height (big-endian).
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() >= 24 && std::memcmp(p + 12, "IHDR", 4) == 0) {
    const uint32_t width = png_get_uint_32(p + 16);
    const uint32_t height = png_get_uint_32(p + 20);
    if (width > static_cast<uint32_t>(kMaxPngDimension) || height > static_cast<uint32_t>(kMaxPngDimension)) {
      return InvalidArgumentError("PNG is " + std::to_string(width) + "x" + std::to_string(height) +
                                  ", over the " + std::to_string(kMaxPngDimension) + "x" +
                                  std::to_string(kMaxPngDimension) + " limit");
    }
  }
  return OkStatus();
}

// Rejects a chunk whose length field points past the end of the data. libpng
// allocates and clears a text chunk's declared length (up to kMaxChunkBytes)
// before finding out that the bytes are missing; this makes such input cheap.
Status CheckChunkLengths(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t pos = sizeof(kPngSignature);
  while (pos + 8 <= bytes.size()) {
    const uint32_t length = png_get_uint_32(p + pos);
    if (length > bytes.size() - pos - 8) {
      std::string type(reinterpret_cast<const char*>(p + pos + 4), 4);
      for (char& c : type) {
        if (c < 33 || c > 126) c = '?';
      }
      return DataLossError("truncated PNG: chunk " + type + " at offset " + std::to_string(pos) + " claims " +
                           std::to_string(length) + " bytes, only " + std::to_string(bytes.size() - pos - 8) +
                           " remain");
    }
    pos += size_t{12} + length;
  }
  return OkStatus();
}

// Pillow's integer ITU-R 601-2 luma (Convert.c, L24 / rgb2l).
inline uint8_t Luma(uint32_t r, uint32_t g, uint32_t b) {
  return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

// Converts one decoded row to RGB or L the way Pillow's PNG plugin unpacks it
// (PngImagePlugin._MODES + Unpack.c) and then convert() maps it (Convert.c).
void ConvertRow(const PngReadState& s, const uint8_t* palette, const uint8_t* in, uint8_t* out,
                int want_channels) {
  const png_uint_32 width = s.width;
  const bool wide = s.bit_depth == 16;
  auto emit_gray = [&](png_uint_32 x, uint8_t v) {
    if (want_channels == 1) {
      out[x] = v;  // Luma(v, v, v) == v: the weights sum to 65536
    } else {
      out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = v;
    }
  };
  auto emit_rgb = [&](png_uint_32 x, uint8_t r, uint8_t g, uint8_t b) {
    if (want_channels == 1) {
      out[x] = Luma(r, g, b);
    } else {
      out[3 * x] = r;
      out[3 * x + 1] = g;
      out[3 * x + 2] = b;
    }
  };
  switch (s.color_type) {
    case PNG_COLOR_TYPE_GRAY:
      if (wide) {
        // Mode "I;16": convert() clips to 0..255 (I16_RGB / I16B_L), it does
        // not take the high byte.
        for (png_uint_32 x = 0; x < width; ++x) {
          const uint32_t v = (uint32_t{in[2 * x]} << 8) | in[2 * x + 1];
          emit_gray(x, static_cast<uint8_t>(std::min<uint32_t>(v, 255)));
        }
      } else {
        // "1" / "L;2" / "L;4" scale to 0..255 (0/255, *0x55, *0x11).
        const unsigned scale = 255u / ((1u << s.bit_depth) - 1u);
        for (png_uint_32 x = 0; x < width; ++x) emit_gray(x, static_cast<uint8_t>(in[x] * scale));
      }
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
      // "LA" and "LA;16B" (high byte); alpha dropped.
      const size_t stride = wide ? 4 : 2;
      for (png_uint_32 x = 0; x < width; ++x) emit_gray(x, in[stride * x]);
      break;
    }
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_RGB_ALPHA: {
      // "RGB;16B" / "RGBA;16B" keep the high byte of each sample.
      const size_t step = wide ? 2 : 1;
      const size_t stride = step * (s.color_type == PNG_COLOR_TYPE_RGB ? 3 : 4);
      for (png_uint_32 x = 0; x < width; ++x) {
        const uint8_t* px = in + stride * x;
        emit_rgb(x, px[0], px[step], px[2 * step]);
      }
      break;
    }
    case PNG_COLOR_TYPE_PALETTE:
      for (png_uint_32 x = 0; x < width; ++x) {
        const uint8_t* rgb = palette + 3 * in[x];
        emit_rgb(x, rgb[0], rgb[1], rgb[2]);
      }
      break;
  }
}

StatusOr<Image> DecodePngImpl(std::string_view bytes, int want_channels) {
  if (want_channels != 1 && want_channels != 3) {
    return InvalidArgumentError("want_channels must be 1 (L) or 3 (RGB), got " + std::to_string(want_channels));
  }
  RETURN_IF_ERROR(CheckPngHeader(bytes));
  PngReader reader(bytes, /*keep_text=*/false);
  RETURN_IF_ERROR(reader.Start());
  PngReadState* s = reader.state();

  // Pillow's palette is 256 zero-filled entries with PLTE copied over the
  // start, so an index past the end of PLTE reads as black.
  uint8_t palette[256 * 3] = {};
  if (s->color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp entries = nullptr;
    int num_entries = 0;
    if (png_get_PLTE(s->png, s->info, &entries, &num_entries) != 0 && entries != nullptr) {
      for (int i = 0; i < std::min(num_entries, 256); ++i) {
        palette[3 * i] = entries[i].red;
        palette[3 * i + 1] = entries[i].green;
        palette[3 * i + 2] = entries[i].blue;
      }
    }
  }

  Image image;
  image.width = static_cast<int>(s->width);
  image.height = static_cast<int>(s->height);
  image.channels = want_channels;
  const size_t out_row = size_t{s->width} * want_channels;
  const uint64_t out_bytes = uint64_t{out_row} * s->height;
  static_assert(uint64_t{kMaxPngDimension} * kMaxPngDimension * 3 <= kMaxPngBufferBytes);

  if (s->interlace == PNG_INTERLACE_NONE) {
    std::vector<uint8_t> row(s->rowbytes);
    image.pixels.reserve(std::min<uint64_t>(out_bytes, kInitialReserveBytes));
    for (png_uint_32 y = 0; y < s->height; ++y) {
      if (!ReadRowProtected(s, row.data())) return reader.Error();
      image.pixels.resize(out_row * (y + 1));
      ConvertRow(*s, palette, row.data(), image.pixels.data() + out_row * y, want_channels);
    }
  } else {
    // Adam7 needs the whole image in memory before any row is final.
    const uint64_t buffer_bytes = uint64_t{s->rowbytes} * s->height;
    if (buffer_bytes > kMaxPngBufferBytes) {
      return InvalidArgumentError("interlaced PNG of " + std::to_string(s->width) + "x" + std::to_string(s->height) +
                                  " needs a " + std::to_string(buffer_bytes >> 20) + " MiB buffer, over the " +
                                  std::to_string(kMaxPngBufferBytes >> 20) + " MiB limit");
    }
    // Left uninitialised on purpose: pages are only touched as passes
    // decode, so a tiny file claiming a huge interlaced image fails before
    // costing real memory. libpng writes every byte before the image is done.
    std::unique_ptr<uint8_t[]> buffer(new (std::nothrow) uint8_t[buffer_bytes]);
    if (buffer == nullptr) {
      return ResourceExhaustedError("cannot allocate " + std::to_string(buffer_bytes >> 20) +
                                    " MiB for an interlaced PNG");
    }
    std::vector<png_bytep> rows(s->height);
    for (png_uint_32 y = 0; y < s->height; ++y) rows[y] = buffer.get() + s->rowbytes * y;
    if (!ReadImageProtected(s, rows.data())) return reader.Error();
    image.pixels.resize(out_bytes);
    for (png_uint_32 y = 0; y < s->height; ++y) {
      ConvertRow(*s, palette, rows[y], image.pixels.data() + out_row * y, want_channels);
    }
  }
  return image;
}

// ---------------------------- UTF-8 / Latin-1 ------------------------------

// Decodes one UTF-8 sequence at text[*pos]; returns -1 (consuming one byte)
// for anything invalid: overlong forms, surrogates, > U+10FFFF, truncation.
int32_t NextCodePoint(std::string_view text, size_t* pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t b0 = byte(*pos);
  int len = 0;
  int32_t cp = 0;
  int32_t min = 0;
  if (b0 < 0x80) {
    ++*pos;
    return b0;
  } else if ((b0 & 0xe0) == 0xc0) {
    len = 2, cp = b0 & 0x1f, min = 0x80;
  } else if ((b0 & 0xf0) == 0xe0) {
    len = 3, cp = b0 & 0x0f, min = 0x800;
  } else if ((b0 & 0xf8) == 0xf0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    ++*pos;
    return -1;
  }
  if (*pos + len > text.size()) {
    ++*pos;
    return -1;
  }
  for (int i = 1; i < len; ++i) {
    const uint8_t b = byte(*pos + i);
    if ((b & 0xc0) != 0x80) {
      ++*pos;
      return -1;
    }
    cp = (cp << 6) | (b & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    ++*pos;
    return -1;
  }
  *pos += len;
  return cp;
}

std::string Latin1ToUtf8(std::string_view latin1) {
  std::string out;
  out.reserve(latin1.size());
  for (char c : latin1) unicode::AppendUtf8(static_cast<uint8_t>(c), &out);
  return out;
}

// Valid UTF-8 in, the same bytes out; each invalid byte becomes U+FFFD.
std::string SanitizeUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const int32_t cp = NextCodePoint(text, &pos);
    unicode::AppendUtf8(cp < 0 ? 0xfffd : cp, &out);
  }
  return out;
}

// UTF-8 -> Latin-1; false if the text is not valid UTF-8 or has a character
// above U+00FF. *valid_utf8 tells the two apart.
bool Utf8ToLatin1(std::string_view utf8, std::string* latin1, bool* valid_utf8) {
  latin1->clear();
  *valid_utf8 = true;
  bool fits = true;
  size_t pos = 0;
  while (pos < utf8.size()) {
    const int32_t cp = NextCodePoint(utf8, &pos);
    if (cp < 0) {
      *valid_utf8 = false;
      return false;
    }
    if (cp > 0xff) fits = false;
    if (fits) latin1->push_back(static_cast<char>(cp));
  }
  return fits;
}

// ------------------------------- writing ----------------------------------

struct PngWriteState {
  PngMessages messages;
  png_structp png = nullptr;
  png_infop info = nullptr;
  std::string* out = nullptr;
  png_uint_32 width = 0, height = 0;
  int color_type = 0;
  int compression_level = 6;
  png_textp text = nullptr;
  int num_text = 0;
  png_bytepp rows = nullptr;
};

void WriteCallback(png_structp png, png_bytep data, size_t length) {
  auto* s = static_cast<PngWriteState*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    s->out->append(reinterpret_cast<const char*>(data), length);
  } catch (...) {  // bad_alloc / length_error: must not unwind through libpng
    failed = true;
  }
  if (failed) png_error(png, "out of memory while writing the PNG");
}

void FlushCallback(png_structp) {}

bool WriteProtected(PngWriteState* s) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_write_fn(s->png, s, WriteCallback, FlushCallback);
  png_set_IHDR(s->png, s->info, s->width, s->height, 8, s->color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(s->png, s->compression_level);
  // png_write_info writes the text chunks, in order, before IDAT (where
  // Pillow puts them too).
  if (s->num_text > 0) png_set_text(s->png, s->info, s->text, s->num_text);
  png_write_info(s->png, s->info);
  png_write_image(s->png, s->rows);
  png_write_end(s->png, nullptr);
  return true;
}

// A PNG keyword: 1-79 printable Latin-1 characters (32-126, 161-255), no
// leading, trailing or consecutive spaces (PNG spec 11.3.4.3). libpng would
// silently "fix" a bad one; we refuse it instead.
Status ToPngKeyword(const std::string& key, std::string* latin1) {
  bool valid_utf8 = false;
  if (!Utf8ToLatin1(key, latin1, &valid_utf8)) {
    return InvalidArgumentError("PNG text keyword \"" + key + "\" is not Latin-1");
  }
  bool ok = !latin1->empty() && latin1->size() <= 79 && latin1->front() != ' ' && latin1->back() != ' ' &&
            latin1->find("  ") == std::string::npos;
  for (char c : *latin1) {
    const auto b = static_cast<uint8_t>(c);
    if (!((b >= 32 && b <= 126) || b >= 161)) ok = false;
  }
  if (!ok) {
    return InvalidArgumentError("invalid PNG text keyword \"" + key +
                                "\" (1-79 printable Latin-1 characters, no leading, trailing or double spaces)");
  }
  return OkStatus();
}

struct TextChunk {
  std::string key;    // Latin-1
  std::string value;  // Latin-1 for tEXt, UTF-8 for iTXt
  bool itxt = false;
};

StatusOr<std::string> EncodePngImpl(const Image& image, const std::vector<std::pair<std::string, std::string>>& text,
                                    int compression_level) {
  if (image.channels != 1 && image.channels != 3) {
    return InvalidArgumentError("EncodePng: channels must be 1 (L) or 3 (RGB), got " +
                                std::to_string(image.channels));
  }
  if (image.width < 1 || image.height < 1 || image.width > kMaxPngDimension || image.height > kMaxPngDimension) {
    return InvalidArgumentError("EncodePng: size " + std::to_string(image.width) + "x" +
                                std::to_string(image.height) + " is outside 1.." + std::to_string(kMaxPngDimension));
  }
  const size_t row_bytes = size_t(image.width) * image.channels;
  if (image.pixels.size() != row_bytes * image.height) {
    return InvalidArgumentError("EncodePng: " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                "x" + std::to_string(image.channels) + " image has " +
                                std::to_string(image.pixels.size()) + " bytes of pixels");
  }
  if (compression_level < 0 || compression_level > 9) {
    return InvalidArgumentError("EncodePng: compression level must be 0..9, got " +
                                std::to_string(compression_level));
  }

  std::vector<TextChunk> chunks(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto& [key, value] = text[i];
    RETURN_IF_ERROR(ToPngKeyword(key, &chunks[i].key));
    if (value.find('\0') != std::string::npos) {
      return InvalidArgumentError("PNG text \"" + key + "\" contains a NUL character");
    }
    bool valid_utf8 = false;
    if (!Utf8ToLatin1(value, &chunks[i].value, &valid_utf8)) {
      if (!valid_utf8) return InvalidArgumentError("PNG text \"" + key + "\" is not valid UTF-8");
      chunks[i].value = value;
      chunks[i].itxt = true;
    }
  }
  static char kEmpty[] = "";
  std::vector<png_text> png_texts(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    png_text& t = png_texts[i];
    t.compression = chunks[i].itxt ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
    t.key = chunks[i].key.data();
    t.text = chunks[i].value.data();
    t.text_length = chunks[i].value.size();
    t.itxt_length = 0;
    t.lang = chunks[i].itxt ? kEmpty : nullptr;
    t.lang_key = chunks[i].itxt ? kEmpty : nullptr;
  }
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) {
    // libpng only reads the rows (no write transforms are set).
    rows[y] = const_cast<png_bytep>(image.pixels.data() + row_bytes * y);
  }

  std::string out;
  out.reserve(image.pixels.size() / 2 + 1024);
  PngWriteState s;
  s.out = &out;
  s.width = image.width;
  s.height = image.height;
  s.color_type = image.channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY;
  s.compression_level = compression_level;
  s.text = png_texts.data();
  s.num_text = static_cast<int>(png_texts.size());
  s.rows = rows.data();
  s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &s.messages, OnPngError, OnPngWarning);
  if (s.png == nullptr) return ResourceExhaustedError("cannot create a libpng writer");
  s.info = png_create_info_struct(s.png);
  bool ok = s.info != nullptr && WriteProtected(&s);
  png_destroy_write_struct(&s.png, &s.info);
  if (!ok) return InternalError(std::string("libpng failed to encode the image: ") + s.messages.error);
  return out;
}

// --------------------------------- files -----------------------------------

Status ErrnoError(int err, const std::string& what) {
  std::string message = what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFoundError(std::move(message));
    case EACCES:
    case EPERM:
      return Status(StatusCode::kPermissionDenied, std::move(message));
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      return ResourceExhaustedError(std::move(message));
    case EISDIR:
    case ENOTDIR:
    case EROFS:
      return FailedPreconditionError(std::move(message));
    case ENAMETOOLONG:
    case EINVAL:
      return InvalidArgumentError(std::move(message));
    case EIO:
      return DataLossError(std::move(message));
    default:
      return Status(StatusCode::kUnknown, std::move(message));
  }
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now, reporting the error close() may carry (NFS, quotas).
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

StatusOr<std::string> ReadFileBytes(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not hang; it is refused just below.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) return ErrnoError(errno, "cannot open");
  struct stat st = {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, "cannot stat");
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxPngBufferBytes) {
    return InvalidArgumentError("file is " + std::to_string(st.st_size) + " bytes, over the " +
                                std::to_string(kMaxPngBufferBytes) + "-byte limit");
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot read");
    }
    if (n == 0) break;  // the file shrank under us: decode what is there
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

Status WriteFileAtomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoError(errno, "cannot create " + tmp);
  auto fail = [&](int err, const std::string& what) {
    if (fd.get() >= 0) fd.Close();
    ::unlink(tmp.c_str());
    return ErrnoError(err, what);
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno, "cannot write " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail(errno, "cannot fsync " + tmp);
  if (fd.Close() != 0) return fail(errno, "cannot close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(errno, "cannot rename " + tmp + " to " + path);
  // Make the rename itself durable. Best effort: the file is complete and in
  // place either way, and some file systems refuse to fsync a directory.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
  return OkStatus();
}

StatusOr<std::vector<std::pair<std::string, std::string>>> DecodePngTextImpl(const std::string& bytes) {
  RETURN_IF_ERROR(CheckPngHeader(bytes));
  RETURN_IF_ERROR(CheckChunkLengths(bytes));
  PngReader reader(bytes, /*keep_text=*/true);
  RETURN_IF_ERROR(reader.Start());
  PngReadState* s = reader.state();
  // Trailing text chunks only come after the image data, so decode it (into
  // one scratch row: with interlace handling on, each pass fills its pixels).
  std::vector<uint8_t> row(s->rowbytes);
  for (int pass = 0; pass < s->passes; ++pass) {
    for (png_uint_32 y = 0; y < s->height; ++y) {
      if (!ReadRowProtected(s, row.data())) return reader.Error();
    }
  }
  if (!ReadEndProtected(s)) return reader.Error();

  std::vector<std::pair<std::string, std::string>> result;
  png_textp texts = nullptr;
  const int num_texts = png_get_text(s->png, s->info, &texts, nullptr);
  for (int i = 0; i < num_texts && texts != nullptr; ++i) {
    const png_text& t = texts[i];
    const std::string_view key = t.key != nullptr ? t.key : "";
    const std::string_view value = t.text != nullptr ? t.text : "";
    const bool is_itxt = t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
    result.emplace_back(Latin1ToUtf8(key), is_itxt ? SanitizeUtf8(value) : Latin1ToUtf8(value));
  }
  return result;
}

}  // namespace

StatusOr<Image> DecodePng(std::string_view bytes, int want_channels) {
  try {
    return DecodePngImpl(bytes, want_channels);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory decoding a " + std::to_string(bytes.size()) + "-byte PNG");
  }
}

StatusOr<Image> ReadPng(const std::string& path, int want_channels) {
  try {
    auto bytes = ReadFileBytes(path);
    if (!bytes.ok()) return bytes.status().WithContext(path);
    auto image = DecodePngImpl(*bytes, want_channels);
    if (!image.ok()) return image.status().WithContext(path);
    return image;
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(path + ": out of memory reading the PNG");
  }
}

StatusOr<std::string> EncodePng(const Image& image, const std::vector<std::pair<std::string, std::string>>& text,
                                int compression_level) {
  try {
    return EncodePngImpl(image, text, compression_level);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory encoding a PNG");
  }
}

Status WritePngAtomic(const std::string& path, const Image& image,
                      const std::vector<std::pair<std::string, std::string>>& text) {
  try {
    auto bytes = EncodePngImpl(image, text, /*compression_level=*/6);
    if (!bytes.ok()) return bytes.status().WithContext(path);
    Status written = WriteFileAtomic(path, *bytes);
    if (!written.ok()) return written.WithContext(path);
    return OkStatus();
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(path + ": out of memory writing the PNG");
  }
}

StatusOr<std::vector<std::pair<std::string, std::string>>> ReadPngText(const std::string& path) {
  try {
    auto bytes = ReadFileBytes(path);
    if (!bytes.ok()) return bytes.status().WithContext(path);
    auto text = DecodePngTextImpl(*bytes);
    if (!text.ok()) return text.status().WithContext(path);
    return text;
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(path + ": out of memory reading PNG text");
  }
}

StatusOr<std::vector<std::pair<std::string, std::string>>> DecodePngText(const std::string& bytes) {
  try {
    return DecodePngTextImpl(bytes);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory reading PNG text");
  }
}

}  // namespace sdfarm::engine
