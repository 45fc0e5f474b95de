// The CLIP byte-level BPE tokenizer of Stable Diffusion's text encoders: turns
// a prompt into the token ids that Hugging Face transformers' slow
// CLIPTokenizer (4.33, without ftfy installed) produces, id for id.
//
//   ASSIGN_OR_RETURN(ClipTokenizer tokenizer, ClipTokenizer::Load(model_dir + "/tokenizer"));
//   ClipTokenizer::Padded p = tokenizer.EncodePadded(prompt);  // 77 ids for the text encoder
//   if (p.dropped_tokens > 0) { /* warn: the end of the prompt is ignored */ }
//
// What Encode does, in transformers' order:
//  1. Special tokens written literally in the prompt (bos/eos/unk/pad and any
//     additional special tokens, exact case-sensitive match; "!" too when it
//     is the pad token, as in SD2.x) are split out and become their own id.
//  2. Each other piece is normalised as transformers' BasicTokenizer(
//     strip_accents=False, do_split_on_punc=False) does: control/format/
//     unassigned characters and U+FFFD dropped, whitespace collapsed, spaces
//     around CJK ideographs, NFC, Python str.lower(). HTML entities are kept
//     as written (unescaping them would need ftfy, which the reference lacks).
//  3. CLIP's pre-tokenizer pattern splits it into words, and each word's
//     UTF-8 bytes are merged by BPE (merges.txt ranks).
// Invalid UTF-8 in the prompt decodes to U+FFFD (as Python's
// errors="replace"), which step 2 drops, so such bytes simply vanish.
//
// Thread-safe: Encode may be called concurrently (the word cache is locked).
#ifndef SDFARM_WORKER_ENGINE_CLIP_TOKENIZER_H_
#define SDFARM_WORKER_ENGINE_CLIP_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

class ClipTokenizer {
 public:
  // Reads tokenizer_dir/vocab.json, merges.txt and tokenizer_config.json, then
  // special_tokens_map.json if present (its entries override the config's, as
  // in from_pretrained). NotFound when a required file is missing, DataLoss
  // (naming the file) when one is malformed.
  // `pad_token`, when not empty, replaces the files' pad token (SD 2.x
  // single-file checkpoints pad with "!" using the SD 1.x tokenizer files).
  static StatusOr<ClipTokenizer> Load(const std::string& tokenizer_dir, const std::string& pad_token = "");

  ClipTokenizer(ClipTokenizer&&) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept;
  ~ClipTokenizer();

  // bos + tokens + eos, no truncation or padding (transformers:
  // `tokenizer(text).input_ids`).
  std::vector<int64_t> Encode(std::string_view text) const;

  struct Padded {
    std::vector<int64_t> ids;  // exactly max_length() ids
    int dropped_tokens = 0;    // prompt tokens cut off by truncation
  };
  // `tokenizer(text, padding="max_length", max_length=model_max_length,
  // truncation=True).input_ids`: bos + the first max_length-2 tokens + eos,
  // then pad ids.
  Padded EncodePadded(std::string_view text) const;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int max_length() const { return max_length_; }
  size_t vocab_size() const { return vocab_size_; }

 private:
  struct WordCache;
  struct SpecialToken {
    std::u32string text;
    int64_t id;
  };
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  ClipTokenizer();

  // Appends the ids of one piece of prompt text that holds no special token.
  void TokenizePiece(std::u32string_view piece, std::vector<int64_t>* ids) const;
  // Appends the BPE ids of one pre-tokenized word (its UTF-8 bytes).
  void EncodeWord(const std::string& word, std::vector<int64_t>* ids) const;
  std::vector<int32_t> Bpe(const std::string& word) const;

  size_t vocab_size_ = 0;
  // Vocabulary ids of the byte-level symbols: byte b as a word-inner symbol,
  // and as the last symbol of a word (with "</w>").
  int32_t byte_id_[256] = {};
  int32_t byte_end_id_[256] = {};
  // (left id << 32 | right id) -> rank and id of the merged symbol.
  std::unordered_map<uint64_t, Merge> merges_;
  // Literal special tokens split out before normalisation, longest first.
  std::vector<SpecialToken> special_tokens_;
  int64_t bos_id_ = 0;
  int64_t eos_id_ = 0;
  int64_t pad_id_ = 0;
  int64_t unk_id_ = 0;
  // Ids of the words "<|startoftext|>" / "<|endoftext|>" when the pattern
  // yields them (see EncodeWord).
  int64_t start_of_text_word_id_ = 0;
  int64_t end_of_text_word_id_ = 0;
  int max_length_ = 77;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_CLIP_TOKENIZER_H_
