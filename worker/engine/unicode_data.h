// The Unicode 14.0 character data and text transforms the CLIP tokenizer needs,
// with Python's exact semantics (the tokenizer must match transformers' slow
// CLIPTokenizer running on Python 3.11, whose unicodedata is Unicode 14.0.0):
// general categories, str.isspace(), str.lower() (full mappings, final sigma),
// NFC, and UTF-8 conversion.
//
//   std::u32string text = unicode::DecodeUtf8(prompt);   // bad bytes -> U+FFFD
//   text = unicode::NormalizeNfc(text);
//   text = unicode::ToLowerFull(text);
//   if (unicode::IsLetter(text[0])) ...
//
// The tables in unicode_data.cc are generated from Python's own unicodedata by
// tools/gen_unicode_data.py (see its header to regenerate); nothing here
// depends on the platform's locale or ICU.
#ifndef SDFARM_WORKER_ENGINE_UNICODE_DATA_H_
#define SDFARM_WORKER_ENGINE_UNICODE_DATA_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace sdfarm::engine::unicode {

// Values as `unicodedata.category()` names them; unassigned code points are
// kCn. The order is the one tools/gen_unicode_data.py writes.
enum class GeneralCategory : uint8_t {
  kLu, kLl, kLt, kLm, kLo,
  kMn, kMc, kMe,
  kNd, kNl, kNo,
  kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo,
  kZs, kZl, kZp,
  kCc, kCf, kCs, kCo, kCn,
};

// Code points above U+10FFFF are kCn.
GeneralCategory Category(char32_t c);
bool IsLetter(char32_t c);          // L*  (the regex module's \p{L})
bool IsNumber(char32_t c);          // N*  (\p{N})
bool IsMark(char32_t c);            // M*
bool IsPunctuation(char32_t c);     // P*
bool IsOther(char32_t c);           // C*: control, format, surrogate, private use, unassigned
bool IsSpaceSeparator(char32_t c);  // Zs
// Python's str.isspace(): what str.split() and str.strip() split on.
bool IsPythonSpace(char32_t c);
// Unicode White_Space: what the `regex` module's \s matches.
bool IsWhiteSpace(char32_t c);

// Canonical_Combining_Class (unicodedata.combining).
int CombiningClass(char32_t c);

// Python's str.lower(): full lower-case mappings (U+0130 'İ' becomes
// "i\u0307"), and U+03A3 'Σ' becomes final 'ς' at the end of a word exactly
// where CPython puts it.
std::u32string ToLowerFull(std::u32string_view text);

// unicodedata.normalize("NFC", text): canonical decomposition, canonical
// ordering, canonical composition (Hangul included).
std::u32string NormalizeNfc(std::u32string_view text);

// UTF-8 -> code points, like Python's bytes.decode("utf-8", errors="replace"):
// every maximal ill-formed subsequence (stray continuation bytes, truncated or
// overlong sequences, encoded surrogates, values above U+10FFFF) becomes one
// U+FFFD, and decoding resumes at the next byte that could start a character.
// Never fails, so any std::string is a valid input.
std::u32string DecodeUtf8(std::string_view bytes);

// Code points -> UTF-8. Surrogates and values above U+10FFFF (which
// DecodeUtf8 never produces) are written as U+FFFD.
void AppendUtf8(char32_t c, std::string* out);
std::string EncodeUtf8(std::u32string_view text);

}  // namespace sdfarm::engine::unicode

#endif  // SDFARM_WORKER_ENGINE_UNICODE_DATA_H_
