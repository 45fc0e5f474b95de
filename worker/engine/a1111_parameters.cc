#include "worker/engine/a1111_parameters.h"
#include "worker/engine/unicode_data.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace sdfarm::engine {
namespace {

// --------------------------------------------------------------------------
// Python string semantics, on UTF-8.
//
// A1111's parser is Python: str.strip(), str.split("\n") and the regex
//   \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)
// over code points. \s is exactly str.isspace(); \w is "alphanumeric or _",
// which for non-ASCII needs the Unicode tables, so here any non-ASCII code
// point that is not whitespace counts as a word character (keys A1111 and
// its extensions write are ASCII, so this only widens what is accepted).
// --------------------------------------------------------------------------

// Decodes the code point at text[pos]; invalid UTF-8 decodes as one byte with
// the value -1 (neither space nor word).
int32_t DecodeAt(std::string_view text, size_t pos, size_t* len) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  *len = 1;
  if (b0 < 0x80) return b0;
  int n = 0;
  int32_t cp = 0;
  if ((b0 & 0xe0) == 0xc0) {
    n = 2, cp = b0 & 0x1f;
  } else if ((b0 & 0xf0) == 0xe0) {
    n = 3, cp = b0 & 0x0f;
  } else if ((b0 & 0xf8) == 0xf0) {
    n = 4, cp = b0 & 0x07;
  } else {
    return -1;
  }
  if (pos + n > text.size()) return -1;
  for (int i = 1; i < n; ++i) {
    const auto b = static_cast<uint8_t>(text[pos + i]);
    if ((b & 0xc0) != 0x80) return -1;
    cp = (cp << 6) | (b & 0x3f);
  }
  *len = n;
  return cp;
}

bool IsPySpace(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}

bool IsPyWord(int32_t cp) {
  if (cp < 0) return false;
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  }
  return !IsPySpace(cp);
}

// Python's str.strip().
std::string_view PyStrip(std::string_view s) {
  size_t begin = s.size(), end = 0;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    if (!IsPySpace(DecodeAt(s, pos, &len))) {
      if (begin == s.size()) begin = pos;
      end = pos + len;
    }
  }
  return begin >= end ? std::string_view() : s.substr(begin, end - begin);
}

size_t SkipPySpace(std::string_view s, size_t pos) {
  size_t len = 0;
  while (pos < s.size() && IsPySpace(DecodeAt(s, pos, &len))) pos += len;
  return pos;
}

// ------------------------------ JSON strings -------------------------------

// json.dumps(text, ensure_ascii=False), which infotext_utils.quote uses.
std::string JsonQuote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<uint8_t>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

bool ReadHex4(std::string_view s, size_t pos, uint32_t* value) {
  if (pos + 4 > s.size()) return false;
  *value = 0;
  for (size_t i = pos; i < pos + 4; ++i) {
    const char c = s[i];
    int digit = 0;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return false;
    }
    *value = *value * 16 + digit;
  }
  return true;
}

// json.loads(text) for a text that must be exactly one JSON string literal;
// nullopt where Python would raise (infotext_utils.unquote then keeps the
// text as it is). A lone surrogate escape becomes U+FFFD.
std::optional<std::string> JsonUnquote(std::string_view text) {
  if (text.size() < 2 || text.front() != '"') return std::nullopt;
  std::string out;
  size_t pos = 1;
  while (true) {
    if (pos >= text.size()) return std::nullopt;
    const char c = text[pos];
    if (c == '"') break;
    if (static_cast<uint8_t>(c) < 0x20) return std::nullopt;  // strict: raw control character
    if (c != '\\') {
      out += c;
      ++pos;
      continue;
    }
    if (pos + 1 >= text.size()) return std::nullopt;
    const char e = text[pos + 1];
    pos += 2;
    switch (e) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        uint32_t cp = 0;
        if (!ReadHex4(text, pos, &cp)) return std::nullopt;
        pos += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {
          uint32_t low = 0;
          if (pos + 6 <= text.size() && text[pos] == '\\' && text[pos + 1] == 'u' && ReadHex4(text, pos + 2, &low) &&
              low >= 0xdc00 && low <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            pos += 6;
          } else {
            cp = 0xfffd;
          }
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
          cp = 0xfffd;
        }
        unicode::AppendUtf8(cp, &out);
        break;
      }
      default:
        return std::nullopt;
    }
  }
  if (pos + 1 != text.size()) return std::nullopt;  // "Extra data" after the string
  return out;
}

// infotext_utils.quote, plus the cases A1111's own parser would not read back
// as written: surrounding whitespace (eaten by \s* / strip()) and a leading
// '"' (which unquote() would try to decode). A1111 reads a quoted value back
// correctly, so quoting more never hurts its readers.
std::string QuoteValue(std::string_view value) {
  const bool quote = value.find_first_of(",:\n") != std::string_view::npos ||
                     (!value.empty() && value.front() == '"') || PyStrip(value).size() != value.size();
  return quote ? JsonQuote(value) : std::string(value);
}

// ------------------------------ the regex ---------------------------------

struct RawParam {
  std::string_view key, value;
};

// One match of re_param at `start`, as Python's re would find it. The
// pattern has no real backtracking: the key class excludes ':' and the
// quoted alternative can only close at its first unescaped '"'.
std::optional<RawParam> MatchParamAt(std::string_view s, size_t start, size_t* match_end) {
  size_t pos = SkipPySpace(s, start);
  const size_t key_begin = pos;
  size_t len = 0;
  if (pos >= s.size() || !IsPyWord(DecodeAt(s, pos, &len))) return std::nullopt;
  pos += len;
  size_t key_chars = 1;
  while (pos < s.size()) {
    const int32_t cp = DecodeAt(s, pos, &len);
    if (!(IsPyWord(cp) || cp == ' ' || cp == '-' || cp == '/')) break;
    pos += len;
    ++key_chars;
  }
  if (key_chars < 2 || pos >= s.size() || s[pos] != ':') return std::nullopt;
  const std::string_view key = s.substr(key_begin, pos - key_begin);
  pos = SkipPySpace(s, pos + 1);

  // "(?:\\.|[^\\"])+" followed by ',' or the end.
  if (pos < s.size() && s[pos] == '"') {
    size_t q = pos + 1;
    size_t items = 0;
    bool closed = false;
    while (q < s.size()) {
      if (s[q] == '"') {
        closed = true;
        break;
      }
      if (s[q] == '\\') {
        if (q + 1 >= s.size() || s[q + 1] == '\n') break;  // '.' needs a non-newline character
        DecodeAt(s, q + 1, &len);
        q += 1 + len;
      } else {
        DecodeAt(s, q, &len);
        q += len;
      }
      ++items;
    }
    if (closed && items > 0 && (q + 1 == s.size() || s[q + 1] == ',')) {
      *match_end = q + 1 == s.size() ? q + 1 : q + 2;
      return RawParam{key, s.substr(pos, q + 1 - pos)};
    }
  }
  // [^,]* followed by ',' or the end.
  size_t end = s.find(',', pos);
  if (end == std::string_view::npos) end = s.size();
  *match_end = end == s.size() ? end : end + 1;
  return RawParam{key, s.substr(pos, end - pos)};
}

// re_param.findall(line).
std::vector<RawParam> FindParams(std::string_view line) {
  std::vector<RawParam> params;
  size_t pos = 0;
  while (pos < line.size()) {
    size_t end = 0;
    if (auto m = MatchParamAt(line, pos, &end)) {
      params.push_back(*m);
      pos = end;
    } else {
      size_t len = 0;
      DecodeAt(line, pos, &len);
      pos += len;
    }
  }
  return params;
}

// ------------------------------ numbers -----------------------------------

std::string_view TrimAscii(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  s = TrimAscii(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

Status BadValue(std::string_view key, std::string_view value, std::string_view expected) {
  return InvalidArgumentError("A1111 parameters: \"" + std::string(key) + ": " + std::string(value) + "\" is not " +
                              std::string(expected));
}

}  // namespace

std::string FormatNumber(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  if (v == std::trunc(v) && std::fabs(v) < 1e16) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  // Shortest round-trip digits, then Python's repr layout: positional for
  // decimal exponents -4..15, else d.ddde+XX.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string_view sci(buf, result.ptr - buf);
  const size_t e = sci.find('e');
  std::string_view mantissa = sci.substr(0, e);
  const int exponent = std::atoi(std::string(sci.substr(e + 1)).c_str());
  std::string sign;
  if (!mantissa.empty() && mantissa.front() == '-') {
    sign = "-";
    mantissa.remove_prefix(1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  std::string out = sign;
  if (exponent < -4 || exponent >= 16) {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1, std::string::npos);
    }
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp_buf;
  } else if (exponent < 0) {
    out += "0.";
    out.append(static_cast<size_t>(-exponent - 1), '0');
    out += digits;
  } else if (digits.size() <= static_cast<size_t>(exponent) + 1) {
    out += digits;
    out.append(exponent + 1 - digits.size(), '0');
    out += ".0";
  } else {
    out.append(digits, 0, exponent + 1);
    out += '.';
    out.append(digits, exponent + 1, std::string::npos);
  }
  return out;
}

std::string FormatA1111Parameters(const GenerationParameters& p) {
  std::string params;
  auto add = [&params](std::string_view key, std::string_view value) {
    if (!params.empty()) params += ", ";
    params += key;
    params += ": ";
    params += QuoteValue(value);
  };
  add("Steps", std::to_string(p.steps));
  add("Sampler", p.sampler);
  if (!p.schedule_type.empty()) add("Schedule type", p.schedule_type);
  add("CFG scale", FormatNumber(p.cfg_scale));
  add("Seed", std::to_string(p.seed));
  add("Size", std::to_string(p.width) + "x" + std::to_string(p.height));
  if (!p.model_hash.empty()) add("Model hash", p.model_hash);
  if (!p.model.empty()) add("Model", p.model);
  if (!p.vae_hash.empty()) add("VAE hash", p.vae_hash);
  if (!p.vae.empty()) add("VAE", p.vae);
  if (p.denoising_strength.has_value()) add("Denoising strength", FormatNumber(*p.denoising_strength));
  if (p.clip_skip.has_value()) add("Clip skip", std::to_string(*p.clip_skip));
  for (const auto& [key, value] : p.extra) add(key, value);

  // f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()
  std::string text = p.prompt;
  if (!p.negative_prompt.empty()) text += "\nNegative prompt: " + p.negative_prompt;
  text += "\n" + params;
  return std::string(PyStrip(text));
}

StatusOr<GenerationParameters> ParseA1111Parameters(std::string_view text) {
  std::vector<std::string_view> lines;
  const std::string_view stripped = PyStrip(text);
  for (size_t begin = 0;;) {
    const size_t nl = stripped.find('\n', begin);
    lines.push_back(stripped.substr(begin, nl == std::string_view::npos ? std::string_view::npos : nl - begin));
    if (nl == std::string_view::npos) break;
    begin = nl + 1;
  }
  const std::string_view last_line = lines.back();
  lines.pop_back();
  const std::vector<RawParam> params = FindParams(last_line);
  if (params.size() < 3) {
    return InvalidArgumentError("not A1111 parameters: the last line has " + std::to_string(params.size()) +
                                " \"Key: value\" pairs, at least 3 are needed");
  }

  GenerationParameters p;
  bool negative = false;
  for (std::string_view line : lines) {
    line = PyStrip(line);
    constexpr std::string_view kNegative = "Negative prompt:";
    if (line.substr(0, kNegative.size()) == kNegative) {
      negative = true;
      line = PyStrip(line.substr(kNegative.size()));
    }
    std::string& target = negative ? p.negative_prompt : p.prompt;
    if (!target.empty()) target += '\n';
    target += line;
  }

  for (const RawParam& param : params) {
    const std::string_view key = param.key;
    std::string value(param.value);
    if (!value.empty() && value.front() == '"' && value.back() == '"') {
      if (auto unquoted = JsonUnquote(value)) value = std::move(*unquoted);
    }
    if (key == "Steps") {
      if (!ParseNumber(value, &p.steps)) return BadValue(key, value, "an integer");
    } else if (key == "Sampler") {
      p.sampler = value;
    } else if (key == "Schedule type") {
      p.schedule_type = value;
    } else if (key == "CFG scale") {
      if (!ParseNumber(value, &p.cfg_scale)) return BadValue(key, value, "a number");
    } else if (key == "Seed") {
      if (!ParseNumber(value, &p.seed)) return BadValue(key, value, "an unsigned integer");
    } else if (key == "Size") {
      const size_t x = value.find('x');
      if (x == std::string::npos || !ParseNumber(std::string_view(value).substr(0, x), &p.width) ||
          !ParseNumber(std::string_view(value).substr(x + 1), &p.height) || p.width < 0 || p.height < 0) {
        return BadValue(key, value, "<width>x<height>");
      }
    } else if (key == "Model hash") {
      p.model_hash = value;
    } else if (key == "Model") {
      p.model = value;
    } else if (key == "VAE hash") {
      p.vae_hash = value;
    } else if (key == "VAE") {
      p.vae = value;
    } else if (key == "Denoising strength") {
      double d = 0;
      if (!ParseNumber(value, &d)) return BadValue(key, value, "a number");
      p.denoising_strength = d;
    } else if (key == "Clip skip") {
      int c = 0;
      if (!ParseNumber(value, &c)) return BadValue(key, value, "an integer");
      p.clip_skip = c;
    } else {
      p.extra.emplace_back(std::string(key), std::move(value));
    }
  }
  return p;
}

}  // namespace sdfarm::engine
