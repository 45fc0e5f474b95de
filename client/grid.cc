#include "client/grid.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/bitmap_font.h"
#include "nlohmann/json.hpp"
#include "worker/engine/png_io.h"

namespace sdfarm::client {
namespace {

namespace fs = std::filesystem;
using engine::Image;

constexpr char kManifest[] = "metadata.jsonl";
constexpr int kMinCell = 16;
constexpr int kMaxCell = 4096;
// Row labels wider than this many characters wrap (and are cut with "..").
constexpr int kMaxLabelChars = 24;
// A sheet is at least wide enough for this many characters of its title.
constexpr int kMinTitleChars = 48;
constexpr int kMaxTitleLines = 3;
constexpr int kMaxHeaderLines = 3;
constexpr uint8_t kBackground = 255;
constexpr uint8_t kInk = 0;
constexpr uint8_t kMissingGrey = 128;

absl::Status ToAbsl(const engine::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

// Keys that identify or describe how an image was made, not what was asked
// for: never an axis and never a reason to make another sheet.
bool IsBookkeeping(std::string_view key) {
  static const std::set<std::string_view> kKeys = {"file_name", "item_index", "job_index",
                                                   "worker",    "render_seconds", "parameters",
                                                   "sweep_id",  "sweep",      "model_hash"};
  return kKeys.count(key) > 0;
}

// The order parameters appear in titles and sheets are grouped by; keys not
// listed follow in alphabetical order.
int PreferredRank(std::string_view key) {
  static const std::vector<std::string_view> kOrder = {
      "prompt", "negative_prompt", "model", "seed", "guidance_scale", "steps", "sampler", "width", "height"};
  auto it = std::find(kOrder.begin(), kOrder.end(), key);
  return it == kOrder.end() ? static_cast<int>(kOrder.size()) : static_cast<int>(it - kOrder.begin());
}

std::string DisplayName(std::string_view key) {
  if (key == "guidance_scale") return "cfg";
  if (key == "negative_prompt") return "negative";
  return std::string(key);
}

// ------------------------------- values -------------------------------------

// One metadata value. Numbers keep their exact integer value when they have
// one (seeds are 64-bit); an integral float (7.0) is the integer 7.
struct Value {
  enum class Kind { kNull, kNumber, kString, kOther };
  Kind kind = Kind::kNull;
  bool is_float = false;
  bool negative = false;  // integers: sign and magnitude
  uint64_t magnitude = 0;
  double d = 0;           // floats
  std::string text;       // shown as is (strings unquoted); identity within a kind
};

std::string FormatDouble(double d) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), d);
  if (ec != std::errc()) return std::to_string(d);
  return std::string(buf, end);
}

Value MakeValue(const nlohmann::json& j) {
  Value v;
  if (j.is_null()) {
    v.kind = Value::Kind::kNull;
    v.text = "-";
  } else if (j.is_number_unsigned()) {
    v.kind = Value::Kind::kNumber;
    v.magnitude = j.get<uint64_t>();
    v.text = std::to_string(v.magnitude);
  } else if (j.is_number_integer()) {
    v.kind = Value::Kind::kNumber;
    int64_t i = j.get<int64_t>();
    v.negative = i < 0;
    v.magnitude = v.negative ? uint64_t{0} - static_cast<uint64_t>(i) : static_cast<uint64_t>(i);
    v.text = std::to_string(i);
  } else if (j.is_number_float()) {
    v.kind = Value::Kind::kNumber;
    double d = j.get<double>();
    if (std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 9007199254740992.0) {  // 2^53
      v.negative = d < 0;
      v.magnitude = static_cast<uint64_t>(std::fabs(d));
      v.text = (v.negative ? "-" : "") + std::to_string(v.magnitude);
    } else {
      v.is_float = true;
      v.d = d;
      v.text = FormatDouble(d);
    }
  } else if (j.is_string()) {
    v.kind = Value::Kind::kString;
    v.text = j.get<std::string>();
  } else {
    v.kind = Value::Kind::kOther;
    v.text = j.dump();
  }
  return v;
}

std::string Identity(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kNull: return "z";
    case Value::Kind::kNumber: return "n" + v.text;
    case Value::Kind::kString: return "s" + v.text;
    case Value::Kind::kOther: return "o" + v.text;
  }
  return v.text;
}

long double AsLongDouble(const Value& v) {
  if (v.is_float) return v.d;
  long double m = static_cast<long double>(v.magnitude);  // exact: 64-bit mantissa on x86-64
  return v.negative ? -m : m;
}

// <0, 0, >0 for two strings, with runs of digits compared as numbers, so
// that "512x512" < "768x768" < "1024x1024" (SDXL's original_size) and
// "prompt 2" < "prompt 10". 0 for texts that differ only in leading zeros.
int NaturalCompare(std::string_view a, std::string_view b) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t end_a = i, end_b = j;
      while (end_a < a.size() && digit(a[end_a])) ++end_a;
      while (end_b < b.size() && digit(b[end_b])) ++end_b;
      while (i + 1 < end_a && a[i] == '0') ++i;  // leading zeros
      while (j + 1 < end_b && b[j] == '0') ++j;
      if (end_a - i != end_b - j) return end_a - i < end_b - j ? -1 : 1;
      if (int c = a.substr(i, end_a - i).compare(b.substr(j, end_b - j)); c != 0) return c < 0 ? -1 : 1;
      i = end_a;
      j = end_b;
      continue;
    }
    if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]) ? -1 : 1;
    ++i;
    ++j;
  }
  if (i < a.size()) return 1;
  if (j < b.size()) return -1;
  return 0;
}

// <0, 0, >0 for two numbers.
int CompareNumbers(const Value& a, const Value& b) {
  if (!a.is_float && !b.is_float) {
    if (a.negative != b.negative) return a.negative ? -1 : 1;
    if (a.magnitude == b.magnitude) return 0;
    bool less = a.magnitude < b.magnitude;
    if (a.negative) less = !less;
    return less ? -1 : 1;
  }
  long double x = AsLongDouble(a), y = AsLongDouble(b);
  return x < y ? -1 : (x > y ? 1 : 0);
}

// Every distinct value a key takes, and their display order.
struct KeyInfo {
  std::string name;
  std::vector<Value> values;
  std::unordered_map<std::string, int> index;  // Identity -> position in values
  std::vector<int> rank;                       // value id -> position in display order
  std::vector<int> order;                      // display order -> value id

  int Intern(Value v) {
    auto [it, inserted] = index.try_emplace(Identity(v), static_cast<int>(values.size()));
    if (inserted) values.push_back(std::move(v));
    return it->second;
  }

  // Numerically when every (non-null) value is a number, else as strings
  // (digit runs as numbers: NaturalCompare); a missing value (null) comes last.
  void Sort() {
    bool all_numbers = true;
    for (const Value& v : values) {
      if (v.kind != Value::Kind::kNull && v.kind != Value::Kind::kNumber) all_numbers = false;
    }
    order.resize(values.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    std::sort(order.begin(), order.end(), [&](int ia, int ib) {
      const Value& a = values[ia];
      const Value& b = values[ib];
      bool a_null = a.kind == Value::Kind::kNull, b_null = b.kind == Value::Kind::kNull;
      if (a_null != b_null) return b_null;
      if (all_numbers && !a_null) {
        int c = CompareNumbers(a, b);
        if (c != 0) return c < 0;
      }
      if (a.text != b.text) {
        const int c = NaturalCompare(a.text, b.text);
        return c != 0 ? c < 0 : a.text < b.text;
      }
      return a.kind < b.kind;
    });
    rank.assign(values.size(), 0);
    for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = static_cast<int>(r);
  }
};

// ------------------------------- manifest -----------------------------------

struct Entry {
  std::string file_name;
  std::vector<int> vals;  // key id -> value id
};

struct Manifest {
  std::vector<KeyInfo> keys;  // parameter keys only
  std::unordered_map<std::string, int> key_index;
  std::vector<Entry> entries;
  std::set<std::string> sweep_names;
};

// A file name from the manifest must stay inside the sweep folder.
bool SafeFileName(const std::string& name) {
  if (name.empty() || name.find('\0') != std::string::npos) return false;
  fs::path p(name);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  for (const fs::path& part : p) {
    if (part == "..") return false;
  }
  return p.has_filename();
}

absl::StatusOr<Manifest> ReadManifest(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path.string(), ": no such file (not a sweep folder?)"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::DataLossError(absl::StrCat(path.string(), ": cannot be read"));

  Manifest m;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat(path.string(), " line ", line_no, ": ", why));
    };
    nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded()) return bad("not valid JSON");
    if (!row.is_object()) return bad("not a JSON object");
    auto fn = row.find("file_name");
    if (fn == row.end() || !fn->is_string()) return bad("no \"file_name\" string");
    Entry e;
    e.file_name = fn->get<std::string>();
    if (!SafeFileName(e.file_name)) return bad(absl::StrCat("bad file_name \"", e.file_name, "\""));
    if (auto sw = row.find("sweep"); sw != row.end() && sw->is_string()) {
      m.sweep_names.insert(sw->get<std::string>());
    }
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (IsBookkeeping(it.key())) continue;
      auto [kit, inserted] = m.key_index.try_emplace(it.key(), static_cast<int>(m.keys.size()));
      if (inserted) {
        m.keys.emplace_back();
        m.keys.back().name = it.key();
      }
      int k = kit->second;
      if (e.vals.size() <= static_cast<size_t>(k)) e.vals.resize(k + 1, -1);
      e.vals[k] = m.keys[k].Intern(MakeValue(it.value()));
    }
    m.entries.push_back(std::move(e));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error after line ", line_no));
  if (m.entries.empty()) return absl::NotFoundError(absl::StrCat(path.string(), ": no images recorded yet"));

  // A key some rows lack is null there.
  for (Entry& e : m.entries) {
    e.vals.resize(m.keys.size(), -1);
    for (size_t k = 0; k < m.keys.size(); ++k) {
      if (e.vals[k] < 0) e.vals[k] = m.keys[k].Intern(Value{});
    }
  }
  for (KeyInfo& k : m.keys) k.Sort();
  return m;
}

std::string ResolveAxisName(const Manifest& m, const std::string& name) {
  if (m.key_index.count(name)) return name;
  std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (lower == "guidance" || lower == "cfg") return "guidance_scale";
  return lower;
}

// ------------------------------- images -------------------------------------

struct PngSize {
  bool present = false;
  int width = 0, height = 0;
};

// The size from a PNG's IHDR, reading 24 bytes; present == false when the
// file does not exist.
absl::StatusOr<PngSize> ReadPngSize(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return PngSize{};
    return absl::DataLossError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  unsigned char h[24];
  size_t got = 0;
  int err = 0;
  while (got < sizeof(h)) {
    ssize_t n = ::read(fd, h + got, sizeof(h) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = errno;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (err != 0) return absl::DataLossError(absl::StrCat(path, ": ", std::strerror(err)));
  static constexpr unsigned char kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (got < sizeof(h) || std::memcmp(h, kSig, 8) != 0 || std::memcmp(h + 12, "IHDR", 4) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a PNG file"));
  }
  auto be32 = [](const unsigned char* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  };
  uint32_t w = be32(h + 16), ht = be32(h + 20);
  if (w == 0 || ht == 0 || w > static_cast<uint32_t>(engine::kMaxPngDimension) ||
      ht > static_cast<uint32_t>(engine::kMaxPngDimension)) {
    return absl::DataLossError(absl::StrCat(path, ": bad PNG size ", w, "x", ht));
  }
  return PngSize{true, static_cast<int>(w), static_cast<int>(ht)};
}

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

// The integer factor that brings the larger side to <= max_cell.
int DownscaleFactor(int w, int h, int max_cell) { return std::max(1, CeilDiv(std::max(w, h), max_cell)); }

// Box-filters src by `factor` (edge boxes average the pixels they hold) and
// writes the result with its top-left corner at (x0, y0) of dst.
void BlitDownscaled(const Image& src, int factor, Image& dst, int x0, int y0) {
  const int ow = CeilDiv(src.width, factor), oh = CeilDiv(src.height, factor);
  std::vector<uint32_t> acc(static_cast<size_t>(ow) * 3);
  for (int oy = 0; oy < oh; ++oy) {
    const int sy0 = oy * factor, sy1 = std::min(src.height, sy0 + factor);
    uint8_t* out = &dst.pixels[(static_cast<size_t>(y0 + oy) * dst.width + x0) * 3];
    if (factor == 1) {
      std::memcpy(out, &src.pixels[static_cast<size_t>(sy0) * src.width * 3], static_cast<size_t>(ow) * 3);
      continue;
    }
    std::fill(acc.begin(), acc.end(), 0);
    for (int sy = sy0; sy < sy1; ++sy) {
      const uint8_t* in = &src.pixels[static_cast<size_t>(sy) * src.width * 3];
      for (int ox = 0; ox < ow; ++ox) {
        const int sx0 = ox * factor, sx1 = std::min(src.width, sx0 + factor);
        uint32_t r = 0, g = 0, b = 0;
        for (int sx = sx0; sx < sx1; ++sx) {
          r += in[sx * 3];
          g += in[sx * 3 + 1];
          b += in[sx * 3 + 2];
        }
        acc[ox * 3] += r;
        acc[ox * 3 + 1] += g;
        acc[ox * 3 + 2] += b;
      }
    }
    const uint32_t rows = static_cast<uint32_t>(sy1 - sy0);
    for (int ox = 0; ox < ow; ++ox) {
      const uint32_t cols = static_cast<uint32_t>(std::min(src.width, ox * factor + factor) - ox * factor);
      const uint32_t n = rows * cols;
      for (int c = 0; c < 3; ++c) out[ox * 3 + c] = static_cast<uint8_t>((acc[ox * 3 + c] + n / 2) / n);
    }
  }
}

void FillRect(Image& img, int x, int y, int w, int h, uint8_t v) {
  int x1 = std::min(img.width, x + w), y1 = std::min(img.height, y + h);
  x = std::max(0, x);
  y = std::max(0, y);
  if (x >= x1) return;
  for (int yy = y; yy < y1; ++yy) {
    std::memset(&img.pixels[(static_cast<size_t>(yy) * img.width + x) * 3], v, static_cast<size_t>(x1 - x) * 3);
  }
}

// ------------------------------- text ---------------------------------------

// Printable ASCII as is, whitespace as a space, anything else (one UTF-8
// sequence at a time) as '?'.
std::string ToAscii(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else if (c == '\t' || c == '\n' || c == '\r') {
      out.push_back(' ');
    } else if (c >= 0x80 && c < 0xC0) {
      // a continuation byte: part of the sequence already shown as '?'
    } else {
      out.push_back('?');
    }
  }
  return out;
}

std::string Truncate(std::string s, size_t max_chars) {
  if (s.size() <= max_chars) return s;
  if (max_chars <= 2) return std::string(max_chars, '.');
  s.resize(max_chars - 2);
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s + "..";
}

// Greedy word wrap into at most max_lines lines of at most max_chars; text
// that does not fit ends with "..". A lone "|" stays with the word before it.
std::vector<std::string> Wrap(const std::string& text, int max_chars, int max_lines) {
  const size_t width = static_cast<size_t>(std::max(1, max_chars));
  std::vector<std::string> words;
  std::istringstream ss(text);
  for (std::string w; ss >> w;) {
    if (w == "|" && !words.empty()) {
      words.back() += " |";
    } else {
      words.push_back(std::move(w));
    }
  }
  std::vector<std::string> lines;
  std::string cur;
  bool overflow = false;
  for (std::string& w : words) {
    if (static_cast<int>(lines.size()) >= max_lines) {
      overflow = true;
      break;
    }
    if (!cur.empty() && cur.size() + 1 + w.size() <= width) {
      cur += " " + w;
      continue;
    }
    if (!cur.empty()) lines.push_back(std::move(cur));
    cur.clear();
    while (w.size() > width) {
      lines.push_back(w.substr(0, width));
      w.erase(0, width);
    }
    cur = std::move(w);
  }
  if (!cur.empty()) lines.push_back(std::move(cur));
  if (static_cast<int>(lines.size()) > max_lines) {
    overflow = true;
    lines.resize(max_lines);
  }
  if (overflow && !lines.empty()) {
    std::string& last = lines.back();
    last = last.size() + 2 <= width ? last + ".." : Truncate(last + "...", width);
  }
  return lines;
}

struct Rect {
  int x0, y0, x1, y1;  // half-open
};

// Draws one line of ASCII with its top-left corner at (x, y), clipped to clip.
void DrawText(Image& img, int x, int y, std::string_view text, int scale, Rect clip) {
  clip.x0 = std::max(clip.x0, 0);
  clip.y0 = std::max(clip.y0, 0);
  clip.x1 = std::min(clip.x1, img.width);
  clip.y1 = std::min(clip.y1, img.height);
  const int advance = (font::kGlyphWidth + 1) * scale;
  for (size_t i = 0; i < text.size(); ++i) {
    const uint8_t* g = font::Glyph(static_cast<unsigned char>(text[i]));
    const int gx0 = x + static_cast<int>(i) * advance;
    if (gx0 >= clip.x1) break;
    for (int gx = 0; gx < font::kGlyphWidth; ++gx) {
      for (int gy = 0; gy < font::kGlyphHeight; ++gy) {
        if (!((g[gx] >> gy) & 1)) continue;
        for (int dy = 0; dy < scale; ++dy) {
          const int py = y + gy * scale + dy;
          if (py < clip.y0 || py >= clip.y1) continue;
          for (int dx = 0; dx < scale; ++dx) {
            const int px = gx0 + gx * scale + dx;
            if (px < clip.x0 || px >= clip.x1) continue;
            uint8_t* p = &img.pixels[(static_cast<size_t>(py) * img.width + px) * 3];
            p[0] = p[1] = p[2] = kInk;
          }
        }
      }
    }
  }
}

// ------------------------------- layout -------------------------------------

struct Layout {
  int scale = 1, advance = 6, line_h = 9, gap = 4, margin = 8, pad = 6;
  int rows = 0, cols = 0, cell_w = 0, cell_h = 0;
  int label_w = 0;  // the row-label band
  std::vector<std::string> title;
  std::vector<std::vector<std::string>> col_lines, row_lines;
  int title_y = 0, header_y = 0, header_h = 0;
  int grid_x = 0, grid_y = 0;
  int64_t width = 0, height = 0;

  int CellX(int c) const { return grid_x + c * (cell_w + gap); }
  int CellY(int r) const { return grid_y + r * (cell_h + gap); }
};

Layout MakeLayout(int cell_w, int cell_h, const std::string& title, const std::vector<std::string>& row_labels,
                  const std::vector<std::string>& col_labels) {
  Layout L;
  L.scale = std::min(cell_w, cell_h) >= 128 ? 2 : 1;
  const int s = L.scale;
  L.advance = (font::kGlyphWidth + 1) * s;
  L.line_h = (font::kGlyphHeight + 2) * s;
  L.gap = 4 * s;
  L.margin = 8 * s;
  L.pad = 6 * s;
  L.rows = static_cast<int>(row_labels.size());
  L.cols = static_cast<int>(col_labels.size());
  L.cell_w = cell_w;
  L.cell_h = cell_h;

  size_t longest = 1;
  for (const std::string& l : row_labels) longest = std::max(longest, l.size());
  const int label_chars = static_cast<int>(std::min<size_t>(longest, kMaxLabelChars));
  L.label_w = label_chars * L.advance;
  const int row_lines_max = std::max(1, (cell_h + L.gap) / L.line_h);
  for (const std::string& l : row_labels) L.row_lines.push_back(Wrap(l, label_chars, row_lines_max));

  const int col_chars = std::max(1, (cell_w + L.gap) / L.advance);
  int header_lines = 1;
  for (const std::string& l : col_labels) {
    L.col_lines.push_back(Wrap(l, col_chars, kMaxHeaderLines));
    header_lines = std::max(header_lines, static_cast<int>(L.col_lines.back().size()));
  }

  const int64_t grid_w = int64_t{L.cols} * cell_w + int64_t{L.cols - 1} * L.gap;
  const int64_t grid_h = int64_t{L.rows} * cell_h + int64_t{L.rows - 1} * L.gap;
  int64_t content_w = L.label_w + L.pad + grid_w;
  content_w = std::max<int64_t>(content_w, int64_t{std::min<int>(static_cast<int>(title.size()), kMinTitleChars)} *
                                               L.advance);
  if (!title.empty()) {
    L.title = Wrap(title, static_cast<int>(std::min<int64_t>(content_w / L.advance, 1 << 20)), kMaxTitleLines);
  }

  L.title_y = L.margin;
  L.header_y = L.title_y + (L.title.empty() ? 0 : static_cast<int>(L.title.size()) * L.line_h + L.pad);
  L.header_h = header_lines * L.line_h;
  L.grid_x = L.margin + L.label_w + L.pad;
  L.grid_y = L.header_y + L.header_h + s * 2;
  L.width = 2 * int64_t{L.margin} + content_w;
  L.height = L.grid_y + grid_h + L.margin;
  return L;
}

void DrawLabels(Image& img, const Layout& L) {
  const int s = L.scale;
  for (size_t i = 0; i < L.title.size(); ++i) {
    DrawText(img, L.margin, L.title_y + static_cast<int>(i) * L.line_h, L.title[i], s,
             {L.margin, 0, img.width - L.margin, img.height});
  }
  // Column headers: centred over their column, bottom lines just above the cells.
  for (int c = 0; c < L.cols; ++c) {
    const std::vector<std::string>& lines = L.col_lines[c];
    const int x0 = L.CellX(c) - L.gap / 2, x1 = L.CellX(c) + L.cell_w + L.gap / 2;
    const int top = L.header_y + L.header_h - static_cast<int>(lines.size()) * L.line_h;
    for (size_t i = 0; i < lines.size(); ++i) {
      const int text_w = static_cast<int>(lines[i].size()) * L.advance - s;
      const int x = L.CellX(c) + (L.cell_w - text_w) / 2;
      DrawText(img, x, top + static_cast<int>(i) * L.line_h, lines[i], s, {x0, L.header_y, x1, L.grid_y});
    }
  }
  // Row labels: left of their row, vertically centred on it.
  for (int r = 0; r < L.rows; ++r) {
    const std::vector<std::string>& lines = L.row_lines[r];
    const int text_h = static_cast<int>(lines.size()) * L.line_h - 2 * s;
    const int y0 = L.CellY(r) - L.gap / 2, y1 = L.CellY(r) + L.cell_h + L.gap / 2;
    const int top = L.CellY(r) + (L.cell_h - text_h) / 2;
    for (size_t i = 0; i < lines.size(); ++i) {
      DrawText(img, L.margin, top + static_cast<int>(i) * L.line_h, lines[i], s,
               {L.margin, y0, L.margin + L.label_w, y1});
    }
  }
}

// ------------------------------- sheets -------------------------------------

std::string FormatValue(const KeyInfo& key, const Value& v) {
  if (v.kind == Value::Kind::kString && (key.name == "prompt" || key.name == "negative_prompt")) {
    return absl::StrCat("\"", v.text, "\"");
  }
  return v.text;
}

std::string AxisLabel(const KeyInfo& key, const Value& v) {
  return ToAscii(absl::StrCat(DisplayName(key.name), " ", FormatValue(key, v)));
}

struct Cell {
  int entry = -1;    // index into Manifest::entries; -1: nothing recorded
  PngSize size;      // of the file, when recorded
};

struct Sheet {
  std::vector<int> fixed;  // value id of every varying key, in grouping order
  std::vector<Cell> cells; // rows * cols, row-major
};

}  // namespace

std::string DefaultGridDir(const std::string& sweep_dir) {
  std::error_code ec;
  fs::path d = fs::absolute(fs::path(sweep_dir), ec).lexically_normal();
  if (ec) d = fs::path(sweep_dir).lexically_normal();
  if (!d.has_filename()) d = d.parent_path();  // "out/fox/" -> "out/fox"
  return (d.parent_path() / (d.filename().string() + ".grids")).string();
}

absl::StatusOr<GridSummary> MakeGrid(const std::string& sweep_dir, const GridOptions& options) {
  if (options.max_cell < kMinCell || options.max_cell > kMaxCell) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_cell must be in [", kMinCell, ", ", kMaxCell, "], got ", options.max_cell));
  }
  if (absl::StripAsciiWhitespace(options.rows).empty() || absl::StripAsciiWhitespace(options.cols).empty()) {
    return absl::InvalidArgumentError("grid axes must not be empty");
  }

  const fs::path dir(sweep_dir);
  absl::StatusOr<Manifest> manifest = ReadManifest(dir / kManifest);
  if (!manifest.ok()) return manifest.status();
  const Manifest& m = *manifest;

  // Axes.
  std::vector<int> param_keys;  // title / grouping order
  for (size_t k = 0; k < m.keys.size(); ++k) param_keys.push_back(static_cast<int>(k));
  std::sort(param_keys.begin(), param_keys.end(), [&](int a, int b) {
    int ra = PreferredRank(m.keys[a].name), rb = PreferredRank(m.keys[b].name);
    return ra != rb ? ra < rb : m.keys[a].name < m.keys[b].name;
  });
  const std::string row_name = ResolveAxisName(m, options.rows);
  const std::string col_name = ResolveAxisName(m, options.cols);
  if (row_name == col_name) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows and columns are both \"", row_name, "\": pick two different keys"));
  }
  for (const auto& [resolved, given] : {std::pair(&row_name, &options.rows), std::pair(&col_name, &options.cols)}) {
    if (m.key_index.count(*resolved)) continue;
    std::vector<std::string> valid;
    for (int k : param_keys) valid.push_back(m.keys[k].name);
    return absl::InvalidArgumentError(absl::StrCat("unknown grid axis \"", *given, "\"; valid keys: ",
                                                   absl::StrJoin(valid, ", "),
                                                   " (\"cfg\" and \"guidance\" mean guidance_scale)"));
  }
  const int row_key = m.key_index.at(row_name), col_key = m.key_index.at(col_name);
  const KeyInfo& rk = m.keys[row_key];
  const KeyInfo& ck = m.keys[col_key];
  const int rows = static_cast<int>(rk.values.size()), cols = static_cast<int>(ck.values.size());

  // One sheet per combination of the other parameters that vary.
  std::vector<int> varying;
  for (int k : param_keys) {
    if (k != row_key && k != col_key && m.keys[k].values.size() > 1) varying.push_back(k);
  }
  std::map<std::vector<int>, int> sheet_of;  // ranks of the varying values -> sheet (sorted)
  std::vector<std::vector<int>> entry_ranks(m.entries.size());
  for (size_t i = 0; i < m.entries.size(); ++i) {
    entry_ranks[i].reserve(varying.size());
    for (int k : varying) entry_ranks[i].push_back(m.keys[k].rank[m.entries[i].vals[k]]);
    sheet_of.try_emplace(entry_ranks[i], 0);
  }
  std::vector<Sheet> sheets;
  for (auto& [ranks, index] : sheet_of) {
    index = static_cast<int>(sheets.size());
    Sheet sh;
    for (size_t v = 0; v < varying.size(); ++v) sh.fixed.push_back(m.keys[varying[v]].order[ranks[v]]);
    sh.cells.resize(static_cast<size_t>(rows) * cols);
    sheets.push_back(std::move(sh));
  }
  for (size_t i = 0; i < m.entries.size(); ++i) {
    const Entry& e = m.entries[i];
    Sheet& sh = sheets[sheet_of.at(entry_ranks[i])];
    Cell& cell = sh.cells[static_cast<size_t>(rk.rank[e.vals[row_key]]) * cols + ck.rank[e.vals[col_key]]];
    if (cell.entry < 0) cell.entry = static_cast<int>(i);  // a repeat of the same values: the first one wins
  }

  std::vector<std::string> row_labels, col_labels;
  for (int r = 0; r < rows; ++r) row_labels.push_back(AxisLabel(rk, rk.values[rk.order[r]]));
  for (int c = 0; c < cols; ++c) col_labels.push_back(AxisLabel(ck, ck.values[ck.order[c]]));

  const fs::path out_dir = options.out_dir.empty() ? fs::path(DefaultGridDir(dir)) : fs::path(options.out_dir);
  {
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat(out_dir.string(), ": ", ec.message()));
  }

  GridSummary summary;
  for (size_t si = 0; si < sheets.size(); ++si) {
    Sheet& sh = sheets[si];

    // The title: every parameter that is the same across this sheet.
    std::vector<std::string> parts;
    if (m.sweep_names.size() == 1) parts.push_back(*m.sweep_names.begin());
    auto value_of = [&](int k) -> const Value& {
      auto it = std::find(varying.begin(), varying.end(), k);
      const KeyInfo& key = m.keys[k];
      return it == varying.end() ? key.values[0] : key.values[sh.fixed[it - varying.begin()]];
    };
    const auto width_it = m.key_index.find("width"), height_it = m.key_index.find("height");
    const bool size_part = width_it != m.key_index.end() && height_it != m.key_index.end() &&
                           width_it->second != row_key && width_it->second != col_key &&
                           height_it->second != row_key && height_it->second != col_key &&
                           value_of(width_it->second).kind != Value::Kind::kNull &&
                           value_of(height_it->second).kind != Value::Kind::kNull;
    for (int k : param_keys) {
      if (k == row_key || k == col_key) continue;
      const KeyInfo& key = m.keys[k];
      const Value& v = value_of(k);
      if (v.kind == Value::Kind::kNull) continue;
      if (size_part && key.name == "height") continue;
      if (size_part && key.name == "width") {
        parts.push_back(absl::StrCat(v.text, "x", value_of(height_it->second).text));
      } else if (key.name == "prompt") {
        parts.push_back(absl::StrCat("prompt: ", FormatValue(key, v)));
      } else if (key.name == "negative_prompt") {
        if (!v.text.empty()) parts.push_back(absl::StrCat("negative: ", FormatValue(key, v)));
      } else if (key.name == "sampler") {
        parts.push_back(v.text);
      } else {
        parts.push_back(absl::StrCat(DisplayName(key.name), " ", FormatValue(key, v)));
      }
    }
    const std::string title = ToAscii(absl::StrJoin(parts, " | "));

    // Image sizes, from their headers.
    for (Cell& cell : sh.cells) {
      if (cell.entry < 0) continue;
      const std::string path = (dir / m.entries[cell.entry].file_name).string();
      absl::StatusOr<PngSize> size = ReadPngSize(path);
      if (!size.ok()) return size.status();
      cell.size = *size;
    }

    // The cell size; cells shrink further when the sheet would be too large for a PNG.
    int max_cell = options.max_cell;
    Layout L;
    while (true) {
      int cw = 0, ch = 0;
      for (const Cell& cell : sh.cells) {
        if (!cell.size.present) continue;
        const int f = DownscaleFactor(cell.size.width, cell.size.height, max_cell);
        cw = std::max(cw, CeilDiv(cell.size.width, f));
        ch = std::max(ch, CeilDiv(cell.size.height, f));
      }
      if (cw == 0) {  // nothing to show: square cells
        cw = ch = std::min(max_cell, 64);
      }
      L = MakeLayout(cw, ch, title, row_labels, col_labels);
      if (L.width <= engine::kMaxPngDimension && L.height <= engine::kMaxPngDimension) break;
      if (max_cell <= 4) {
        return absl::InvalidArgumentError(absl::StrCat("a grid of ", rows, " x ", cols,
                                                       " cells does not fit in one PNG (at most ",
                                                       engine::kMaxPngDimension, " pixels a side)"));
      }
      max_cell = std::max(4, max_cell * 4 / 5);
    }

    Image img;
    img.width = static_cast<int>(L.width);
    img.height = static_cast<int>(L.height);
    img.channels = 3;
    img.pixels.assign(static_cast<size_t>(img.width) * img.height * 3, kBackground);
    DrawLabels(img, L);

    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) {
        const Cell& cell = sh.cells[static_cast<size_t>(r) * cols + c];
        bool drawn = false;
        if (cell.size.present) {
          const std::string path = (dir / m.entries[cell.entry].file_name).string();
          engine::StatusOr<Image> src = engine::ReadPng(path, 3);
          if (!src.ok() && src.status().code() != engine::StatusCode::kNotFound) {
            return absl::DataLossError(src.status().message());
          }
          if (src.ok()) {
            if (src->width != cell.size.width || src->height != cell.size.height) {
              return absl::DataLossError(absl::StrCat(path, ": changed while the grid was being made"));
            }
            const int f = DownscaleFactor(src->width, src->height, max_cell);
            const int w = CeilDiv(src->width, f), h = CeilDiv(src->height, f);
            BlitDownscaled(*src, f, img, L.CellX(c) + (L.cell_w - w) / 2, L.CellY(r) + (L.cell_h - h) / 2);
            drawn = true;
          }
        }
        if (drawn) {
          ++summary.images;
        } else {
          FillRect(img, L.CellX(c), L.CellY(r), L.cell_w, L.cell_h, kMissingGrey);
          ++summary.missing;
        }
      }
    }

    char name[32];
    if (sheets.size() == 1) {
      std::snprintf(name, sizeof(name), "grid.png");
    } else {
      std::snprintf(name, sizeof(name), "grid-%03zu.png", si + 1);
    }
    const std::string out_path = (out_dir / name).string();
    // The labels as text too, for tools (and tests) that cannot read pixels.
    std::vector<std::pair<std::string, std::string>> text = {{"Software", "sdfarm grid"}};
    if (!title.empty()) text.emplace_back("Title", title);
    text.emplace_back("Rows", absl::StrJoin(row_labels, "\n"));
    text.emplace_back("Columns", absl::StrJoin(col_labels, "\n"));
    const engine::Status written = engine::WritePngAtomic(out_path, img, text);
    if (!written.ok()) return ToAbsl(written);
    summary.files.push_back(out_path);
  }
  return summary;
}

}  // namespace sdfarm::client
