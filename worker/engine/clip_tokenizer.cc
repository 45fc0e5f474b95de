#include "worker/engine/clip_tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <system_error>

#include "common/status_macros.h"
#include "worker/engine/unicode_data.h"

namespace sdfarm::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// transformers' CLIPTokenizer reads at most this many merges (lines 1..48894
// of merges.txt; line 0 is the "#version" header).
constexpr size_t kMaxMerges = 49152 - 256 - 2;
// CLIP text encoders have 77 positions; used when the config names no length.
constexpr int kDefaultMaxLength = 77;
constexpr int kMaxMaxLength = 1 << 20;
// Bounds the word cache of a long-running worker (a prompt has tens of words).
constexpr size_t kMaxCachedWords = 1 << 16;

// The two words CLIPTokenizer's BPE cache maps to themselves, so that the
// pattern's special-token alternatives (reached when they are written in
// another case, e.g. "<|ENDOFTEXT|>", which only lower-casing turns into the
// token) give the special ids.
constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
// the others are moved to U+0100 and up, so no symbol is whitespace/control.
std::string ByteSymbol(uint8_t b) {
  auto printable = [](int x) { return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE); };
  char32_t c = b;
  if (!printable(b)) {
    int n = 0;
    for (int x = 0; x < b; ++x) n += printable(x) ? 0 : 1;
    c = 256 + n;
  }
  std::string out;
  unicode::AppendUtf8(c, &out);
  return out;
}

// BasicTokenizer._is_chinese_char: the CJK ideograph blocks (not kana, not
// Hangul), which get spaces around them.
bool IsChineseChar(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// One character of the pattern, compiled with re.IGNORECASE: the regex module
// matches by simple case folding, under which U+017F LATIN SMALL LETTER LONG S
// is an 's' too (str.lower() leaves it as it is).
bool MatchesFolded(char32_t c, char pattern_char) {
  if (c == static_cast<unsigned char>(pattern_char)) return true;
  if (pattern_char >= 'a' && pattern_char <= 'z' && c == static_cast<char32_t>(pattern_char - 'a' + 'A')) return true;
  return pattern_char == 's' && c == 0x017F;
}

bool MatchesAt(std::u32string_view text, size_t i, std::string_view literal) {
  if (text.size() - i < literal.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (!MatchesFolded(text[i + k], literal[k])) return false;
  }
  return true;
}

// Character classes of the pattern under re.IGNORECASE. The regex module lets
// U+0345 COMBINING GREEK YPOGEGRAMMENI match neither [\p{L}] nor
// [^\s\p{L}\p{N}] there (it case-folds to iota, a letter), so the
// reference drops it when it survives NFC on its own.
bool IsPatternLetter(char32_t c) { return unicode::IsLetter(c); }
bool IsPatternNumber(char32_t c) { return unicode::IsNumber(c); }
bool IsPatternOther(char32_t c) {
  return c != 0x0345 && !unicode::IsWhiteSpace(c) && !unicode::IsLetter(c) && !unicode::IsNumber(c);
}

// Length of the match of CLIP's pre-tokenizer pattern at text[i], 0 if none:
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// with re.IGNORECASE. Alternatives are tried in order (first match wins,
// not longest), as the regex engine does.
size_t MatchPattern(std::u32string_view text, size_t i) {
  if (MatchesAt(text, i, kStartOfText)) return kStartOfText.size();
  if (MatchesAt(text, i, kEndOfText)) return kEndOfText.size();
  if (text[i] == '\'') {
    for (std::string_view contraction : {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
      if (MatchesAt(text, i, contraction)) return contraction.size();
    }
  }
  size_t j = i;
  if (IsPatternLetter(text[i])) {
    while (j < text.size() && IsPatternLetter(text[j])) ++j;
    return j - i;
  }
  if (IsPatternNumber(text[i])) return 1;
  while (j < text.size() && IsPatternOther(text[j])) ++j;
  return j - i;
}

// BasicTokenizer._clean_text and _tokenize_chinese_chars.
std::u32string CleanText(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    const bool tab_or_newline = c == '\t' || c == '\n' || c == '\r';
    if (c == 0 || c == 0xFFFD || (!tab_or_newline && unicode::IsOther(c))) continue;
    if (c == ' ' || tab_or_newline || unicode::IsSpaceSeparator(c)) {
      out.push_back(' ');
    } else if (IsChineseChar(c)) {
      out.push_back(' ');
      out.push_back(c);
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The rest of BasicTokenizer.tokenize: NFC, split on str.isspace(), lower each
// word; CLIPTokenizer joins the words with single spaces.
std::u32string NormalizeText(std::u32string_view text) {
  const std::u32string nfc = unicode::NormalizeNfc(CleanText(text));
  std::u32string out;
  out.reserve(nfc.size());
  size_t i = 0;
  while (i < nfc.size()) {
    if (unicode::IsPythonSpace(nfc[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < nfc.size() && !unicode::IsPythonSpace(nfc[j])) ++j;
    if (!out.empty()) out.push_back(' ');
    out += unicode::ToLowerFull(std::u32string_view(nfc).substr(i, j - i));
    i = j;
  }
  return out;
}

StatusOr<std::string> ReadFile(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return NotFoundError(path.string() + ": not found");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(path.string() + ": cannot open: " + std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return DataLossError(path.string() + ": read error");
  return buffer.str();
}

StatusOr<json> ReadJsonObject(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json parsed = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return DataLossError(path.string() + ": not valid JSON");
  if (!parsed.is_object()) return DataLossError(path.string() + ": expected a JSON object");
  return parsed;
}

// A special-token entry of tokenizer_config.json / special_tokens_map.json: a
// string, an AddedToken object ({"content": ...}) or null.
StatusOr<std::optional<std::string>> TokenContent(const json& value, const fs::path& file, const std::string& key) {
  if (value.is_null()) return std::optional<std::string>();
  if (value.is_string()) return std::optional<std::string>(value.get<std::string>());
  if (value.is_object()) {
    auto content = value.find("content");
    if (content != value.end() && content->is_string()) {
      return std::optional<std::string>(content->get<std::string>());
    }
  }
  return DataLossError(file.string() + ": \"" + key + "\" must be a string or an object with a string \"content\"");
}

// The special tokens as from_pretrained ends up with them: CLIPTokenizer's
// defaults, then tokenizer_config.json, then special_tokens_map.json.
struct SpecialTokenConfig {
  // transformers' SPECIAL_TOKENS_ATTRIBUTES order (the order new ids would be
  // given in).
  std::vector<std::pair<std::string, std::optional<std::string>>> named = {
      {"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"},
      {"sep_token", std::nullopt},      {"pad_token", "<|endoftext|>"}, {"cls_token", std::nullopt},
      {"mask_token", std::nullopt},
  };
  std::vector<std::string> additional;

  const std::optional<std::string>& Get(const std::string& key) const {
    for (const auto& [name, value] : named) {
      if (name == key) return value;
    }
    static const std::optional<std::string> kNone;
    return kNone;
  }

  Status Apply(const json& config, const fs::path& file) {
    for (auto& [name, value] : named) {
      auto it = config.find(name);
      if (it == config.end()) continue;
      ASSIGN_OR_RETURN(value, TokenContent(*it, file, name));
    }
    auto it = config.find("additional_special_tokens");
    if (it != config.end() && !it->is_null()) {
      if (!it->is_array()) return DataLossError(file.string() + ": \"additional_special_tokens\" must be a list");
      additional.clear();
      for (const json& entry : *it) {
        ASSIGN_OR_RETURN(std::optional<std::string> content,
                         TokenContent(entry, file, "additional_special_tokens"));
        if (content.has_value()) additional.push_back(*content);
      }
    }
    return OkStatus();
  }
};

}  // namespace

struct ClipTokenizer::WordCache {
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int32_t>> words;  // guarded by mu
};

ClipTokenizer::ClipTokenizer() : cache_(std::make_unique<WordCache>()) {}
ClipTokenizer::ClipTokenizer(ClipTokenizer&&) noexcept = default;
ClipTokenizer& ClipTokenizer::operator=(ClipTokenizer&&) noexcept = default;
ClipTokenizer::~ClipTokenizer() = default;

StatusOr<ClipTokenizer> ClipTokenizer::Load(const std::string& tokenizer_dir, const std::string& pad_token) {
  const fs::path dir(tokenizer_dir);
  ClipTokenizer tok;

  // vocab.json: {"symbol": id, ...}
  const fs::path vocab_path = dir / "vocab.json";
  ASSIGN_OR_RETURN(json vocab_json, ReadJsonObject(vocab_path));
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_json.size());
  for (const auto& [symbol, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return DataLossError(vocab_path.string() + ": the id of \"" + symbol + "\" is not a non-negative integer");
    }
    vocab.emplace(symbol, static_cast<int32_t>(id.get<int64_t>()));
  }
  if (vocab.empty()) return DataLossError(vocab_path.string() + ": empty vocabulary");
  tok.vocab_size_ = vocab.size();
  vocab_json = json();

  for (int b = 0; b < 256; ++b) {
    const std::string symbol = ByteSymbol(static_cast<uint8_t>(b));
    auto inner = vocab.find(symbol);
    auto end = vocab.find(symbol + "</w>");
    if (inner == vocab.end() || end == vocab.end()) {
      return DataLossError(vocab_path.string() + ": missing the byte-level symbol for byte " + std::to_string(b) +
                           " (not a byte-level BPE vocabulary)");
    }
    tok.byte_id_[b] = inner->second;
    tok.byte_end_id_[b] = end->second;
  }

  // merges.txt: a header line, then "left right" per line, best first. As in
  // CLIPTokenizer: the content is stripped, the first line skipped, at most
  // kMaxMerges lines used; a repeated pair keeps its last rank. Stricter than
  // it: a missing "#version" header, a line that is not two symbols, or a
  // symbol vocab.json lacks is an error (Python would silently tokenize
  // differently), which also lets BPE work on vocabulary ids.
  const fs::path merges_path = dir / "merges.txt";
  ASSIGN_OR_RETURN(std::string merges_text, ReadFile(merges_path));
  {
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    size_t begin = 0, end = merges_text.size();
    while (begin < end && is_space(merges_text[begin])) ++begin;
    while (end > begin && is_space(merges_text[end - 1])) --end;
    std::string_view content(merges_text.data() + begin, end - begin);
    size_t pos = content.find('\n');
    if (pos == std::string_view::npos || content.substr(0, 8) != "#version") {
      return DataLossError(merges_path.string() + ": expected a \"#version\" header line followed by merges");
    }
    tok.merges_.reserve(kMaxMerges);
    int32_t rank = 0;
    size_t line_no = 1;  // 0-based, as in the Python slice
    for (++pos; pos <= content.size() && static_cast<size_t>(rank) < kMaxMerges; ++rank, ++line_no) {
      size_t next = content.find('\n', pos);
      if (next == std::string_view::npos) next = content.size();
      std::string_view line = content.substr(pos, next - pos);
      pos = next + 1;
      std::vector<std::string_view> parts;
      for (size_t k = 0; k < line.size();) {
        while (k < line.size() && is_space(line[k])) ++k;
        size_t start = k;
        while (k < line.size() && !is_space(line[k])) ++k;
        if (k > start) parts.push_back(line.substr(start, k - start));
      }
      if (parts.size() != 2) {
        return DataLossError(merges_path.string() + ": line " + std::to_string(line_no + 1) +
                             " is not \"left right\"");
      }
      auto left = vocab.find(std::string(parts[0]));
      auto right = vocab.find(std::string(parts[1]));
      auto merged = vocab.find(std::string(parts[0]) + std::string(parts[1]));
      if (left == vocab.end() || right == vocab.end() || merged == vocab.end()) {
        return DataLossError(merges_path.string() + ": line " + std::to_string(line_no + 1) +
                             " merges symbols that vocab.json does not have");
      }
      const uint64_t key = (static_cast<uint64_t>(left->second) << 32) | static_cast<uint32_t>(right->second);
      tok.merges_.insert_or_assign(key, Merge{rank, merged->second});
    }
  }

  // Special tokens and length.
  SpecialTokenConfig specials;
  const fs::path config_path = dir / "tokenizer_config.json";
  ASSIGN_OR_RETURN(json config, ReadJsonObject(config_path));
  RETURN_IF_ERROR(specials.Apply(config, config_path));
  if (auto it = config.find("model_max_length"); it != config.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 2 || it->get<int64_t>() > kMaxMaxLength) {
      return DataLossError(config_path.string() + ": \"model_max_length\" must be an integer in [2, " +
                           std::to_string(kMaxMaxLength) + "]");
    }
    tok.max_length_ = static_cast<int>(it->get<int64_t>());
  } else {
    tok.max_length_ = kDefaultMaxLength;
  }
  const fs::path map_path = dir / "special_tokens_map.json";
  std::error_code ec;
  if (fs::exists(map_path, ec)) {
    ASSIGN_OR_RETURN(json map, ReadJsonObject(map_path));
    RETURN_IF_ERROR(specials.Apply(map, map_path));
  }
  if (!pad_token.empty()) {
    for (auto& [name, value] : specials.named) {
      if (name == "pad_token") value = pad_token;
    }
  }

  // Every special token is kept whole when written in a prompt; one missing
  // from the vocabulary gets the next free id, as transformers adds it.
  int64_t next_added_id = static_cast<int64_t>(tok.vocab_size_);
  std::vector<std::string> all_specials;
  for (const auto& [name, value] : specials.named) {
    if (value.has_value()) all_specials.push_back(*value);
  }
  all_specials.insert(all_specials.end(), specials.additional.begin(), specials.additional.end());
  auto id_of = [&](const std::string& token) -> int64_t {
    for (const SpecialToken& s : tok.special_tokens_) {
      if (s.text == unicode::DecodeUtf8(token)) return s.id;
    }
    return -1;
  };
  for (const std::string& token : all_specials) {
    if (token.empty() || id_of(token) >= 0) continue;
    auto it = vocab.find(token);
    const int64_t id = it != vocab.end() ? it->second : next_added_id++;
    tok.special_tokens_.push_back({unicode::DecodeUtf8(token), id});
  }
  std::stable_sort(tok.special_tokens_.begin(), tok.special_tokens_.end(),
                   [](const SpecialToken& a, const SpecialToken& b) { return a.text.size() > b.text.size(); });

  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"}) {
    if (!specials.Get(key).has_value() || specials.Get(key)->empty()) {
      return DataLossError(config_path.string() + ": the tokenizer has no " + key);
    }
  }
  tok.bos_id_ = id_of(*specials.Get("bos_token"));
  tok.eos_id_ = id_of(*specials.Get("eos_token"));
  tok.pad_id_ = id_of(*specials.Get("pad_token"));
  tok.unk_id_ = id_of(*specials.Get("unk_token"));
  // convert_tokens_to_ids: the vocabulary, then the added tokens, then unk.
  auto word_id = [&](std::string_view word) -> int64_t {
    if (auto it = vocab.find(std::string(word)); it != vocab.end()) return it->second;
    const int64_t id = id_of(std::string(word));
    return id >= 0 ? id : tok.unk_id_;
  };
  tok.start_of_text_word_id_ = word_id(kStartOfText);
  tok.end_of_text_word_id_ = word_id(kEndOfText);
  return tok;
}

std::vector<int32_t> ClipTokenizer::Bpe(const std::string& word) const {
  const size_t n = word.size();
  std::vector<int32_t> symbols(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t b = static_cast<uint8_t>(word[i]);
    symbols[i] = i + 1 < n ? byte_id_[b] : byte_end_id_[b];
  }
  // CLIPTokenizer.bpe: repeatedly merge every occurrence (left to right) of
  // the best-ranked adjacent pair, until no adjacent pair has a rank.
  std::vector<int32_t> next;
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX;
    uint64_t best_key = 0;
    int32_t best_merged = -1;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(symbols[i]) << 32) | static_cast<uint32_t>(symbols[i + 1]);
      auto it = merges_.find(key);
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        best_key = key;
        best_merged = it->second.merged_id;
      }
    }
    if (best_merged < 0) break;
    const int32_t first = static_cast<int32_t>(best_key >> 32);
    const int32_t second = static_cast<int32_t>(best_key & 0xFFFFFFFFu);
    next.clear();
    for (size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == first && symbols[i + 1] == second) {
        next.push_back(best_merged);
        i += 2;
      } else {
        next.push_back(symbols[i]);
        ++i;
      }
    }
    symbols.swap(next);
  }
  return symbols;
}

void ClipTokenizer::EncodeWord(const std::string& word, std::vector<int64_t>* ids) const {
  // CLIPTokenizer's BPE cache returns these two words unchanged (no "</w>").
  if (word == kStartOfText) {
    ids->push_back(start_of_text_word_id_);
    return;
  }
  if (word == kEndOfText) {
    ids->push_back(end_of_text_word_id_);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_->mu);
    auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols = Bpe(word);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->words.size() >= kMaxCachedWords) cache_->words.clear();
  cache_->words.emplace(word, std::move(symbols));
}

void ClipTokenizer::TokenizePiece(std::u32string_view piece, std::vector<int64_t>* ids) const {
  const std::u32string text = NormalizeText(piece);
  std::string word;
  for (size_t i = 0; i < text.size();) {
    const size_t length = MatchPattern(text, i);
    if (length == 0) {  // findall skips what no alternative matches (spaces)
      ++i;
      continue;
    }
    word.clear();
    for (size_t k = i; k < i + length; ++k) unicode::AppendUtf8(text[k], &word);
    EncodeWord(word, ids);
    i += length;
  }
}

std::vector<int64_t> ClipTokenizer::Encode(std::string_view text) const {
  const std::u32string chars = unicode::DecodeUtf8(text);
  std::vector<int64_t> ids;
  ids.reserve(chars.size() / 3 + 8);
  ids.push_back(bos_id_);
  // PreTrainedTokenizer.tokenize: cut at literal special tokens (leftmost,
  // longest first); the pieces between are tokenized on their own. The
  // whitespace stripping transformers does around some of them cannot change
  // the ids, since normalisation drops that whitespace anyway.
  size_t piece_start = 0;
  for (size_t i = 0; i < chars.size();) {
    const SpecialToken* match = nullptr;
    for (const SpecialToken& s : special_tokens_) {
      if (chars.compare(i, s.text.size(), s.text) == 0) {
        match = &s;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    TokenizePiece(std::u32string_view(chars).substr(piece_start, i - piece_start), &ids);
    ids.push_back(match->id);
    i += match->text.size();
    piece_start = i;
  }
  TokenizePiece(std::u32string_view(chars).substr(piece_start), &ids);
  ids.push_back(eos_id_);
  return ids;
}

ClipTokenizer::Padded ClipTokenizer::EncodePadded(std::string_view text) const {
  Padded out;
  out.ids = Encode(text);
  const size_t keep = static_cast<size_t>(max_length_) - 2;  // room for bos and eos
  const size_t tokens = out.ids.size() - 2;
  if (tokens > keep) {
    out.dropped_tokens = static_cast<int>(tokens - keep);
    out.ids.resize(1 + keep);
    out.ids.push_back(eos_id_);
  }
  out.ids.resize(static_cast<size_t>(max_length_), pad_id_);
  return out;
}

}  // namespace sdfarm::engine
