// Fuzzes ClipTokenizer::Encode / EncodePadded (worker/engine/clip_tokenizer.h):
// prompts are user text, and the tokenizer's Unicode normalisation, special-
// token splitting and BPE all index into tables with it.
//
// The vocabulary is loaded once. Folders tried, in order:
//   $SDFARM_FUZZ_TOKENIZER_DIR
//   SDFARM_FUZZ_TOKENIZER_DIRS (compile definition, ':'-separated: the tiny-sd
//   fixture in ../shared, then deploy/models/sdfarm-mini/tokenizer in the repo)
// The SD 2.x tokenizer (pad token "!", fixture tiny-sd-v2) is loaded too when
// present; the first input byte's low bit picks between the two.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "worker/engine/clip_tokenizer.h"

namespace {

using sdfarm::engine::ClipTokenizer;

std::unique_ptr<ClipTokenizer> TryLoad(const std::string& dir) {
  if (dir.empty()) return nullptr;
  auto loaded = ClipTokenizer::Load(dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "fuzz_tokenizer: %s: %s\n", dir.c_str(), loaded.status().ToString().c_str());
    return nullptr;
  }
  std::fprintf(stderr, "fuzz_tokenizer: loaded %s (%zu symbols)\n", dir.c_str(), loaded->vocab_size());
  return std::make_unique<ClipTokenizer>(std::move(*loaded));
}

struct Tokenizers {
  std::unique_ptr<ClipTokenizer> v1, v2;
};

const Tokenizers& Get() {
  static const Tokenizers* tokenizers = [] {
    auto* t = new Tokenizers;
    std::vector<std::string> dirs;
    if (const char* env = std::getenv("SDFARM_FUZZ_TOKENIZER_DIR"); env != nullptr && *env != '\0') {
      dirs.push_back(env);
    }
    const std::string builtin = SDFARM_FUZZ_TOKENIZER_DIRS;
    for (size_t start = 0; start <= builtin.size();) {
      size_t colon = builtin.find(':', start);
      if (colon == std::string::npos) colon = builtin.size();
      dirs.push_back(builtin.substr(start, colon - start));
      start = colon + 1;
    }
    for (const std::string& dir : dirs) {
      if ((t->v1 = TryLoad(dir)) != nullptr) break;
    }
    if (t->v1 == nullptr) {
      std::fprintf(stderr, "fuzz_tokenizer: no tokenizer found; set SDFARM_FUZZ_TOKENIZER_DIR to a folder "
                           "with vocab.json, merges.txt and tokenizer_config.json\n");
      std::exit(2);
    }
    t->v2 = TryLoad(SDFARM_FUZZ_TOKENIZER_V2_DIR);
    return t;
  }();
  return *tokenizers;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Prompts are capped at SweepLimits::max_prompt_chars (4000 code points)
  // before they reach a worker; BPE is quadratic in the length of one word.
  if (size > 16384) return -1;
  const Tokenizers& t = Get();
  const ClipTokenizer& tok = (data[0] & 1) && t.v2 != nullptr ? *t.v2 : *t.v1;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::vector<int64_t> ids = tok.Encode(text);
  FUZZ_CHECK(ids.size() >= 2);
  FUZZ_CHECK(ids.front() == tok.bos_id() && ids.back() == tok.eos_id());
  // Ids come from the vocabulary or are special tokens added after it.
  const int64_t max_id = static_cast<int64_t>(tok.vocab_size()) + 16;
  for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < max_id);

  const ClipTokenizer::Padded padded = tok.EncodePadded(text);
  FUZZ_CHECK(padded.ids.size() == static_cast<size_t>(tok.max_length()));
  const size_t tokens = ids.size() - 2;
  const size_t keep = static_cast<size_t>(tok.max_length()) - 2;
  FUZZ_CHECK(padded.dropped_tokens == static_cast<int>(tokens > keep ? tokens - keep : 0));
  const size_t kept = tokens - static_cast<size_t>(padded.dropped_tokens);
  for (size_t i = 0; i < 1 + kept; ++i) FUZZ_CHECK(padded.ids[i] == ids[i]);
  FUZZ_CHECK(padded.ids[1 + kept] == tok.eos_id());
  for (size_t i = 2 + kept; i < padded.ids.size(); ++i) FUZZ_CHECK(padded.ids[i] == tok.pad_id());
  // The word cache must not change results: encode again.
  FUZZ_CHECK(tok.Encode(text) == ids);
  return 0;
}
