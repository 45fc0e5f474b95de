// AUTOMATIC1111's prompt chunking (see prompt_chunks.h for the rules).
#include "worker/engine/prompt_chunks.h"

#include <algorithm>
#include <cstddef>

namespace sdfarm::engine {
namespace {

// The id of "," as a word of its own (",</w>", what A1111 looks up), or -1
// when the vocabulary splits it.
int64_t CommaId(const ClipTokenizer& tokenizer) {
  const std::vector<int64_t> ids = tokenizer.Encode(",");  // bos, ",</w>", eos
  return ids.size() == 3 ? ids[1] : -1;
}

// BOS + tokens + EOS, then the pad id up to max_length. (A1111 pads with EOS
// and then sets every id after the first EOS to the pad id; the two agree
// unless the prompt itself holds a literal "<|endoftext|>", where A1111
// would also blank the words after it on SD 2.x. Here they stay, as
// EncodePadded keeps them.)
std::vector<int64_t> Frame(const ClipTokenizer& tokenizer, const std::vector<int64_t>& tokens) {
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(tokenizer.max_length()));
  ids.push_back(tokenizer.bos_id());
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(tokenizer.eos_id());
  ids.resize(static_cast<size_t>(tokenizer.max_length()), tokenizer.pad_id());
  return ids;
}

}  // namespace

std::vector<std::vector<int64_t>> ChunkPromptIds(const ClipTokenizer& tokenizer, std::string_view text,
                                                 int comma_backtrack) {
  std::vector<int64_t> tokens = tokenizer.Encode(text);
  tokens.erase(tokens.begin());  // Encode adds bos ... eos; A1111 tokenizes without them
  tokens.pop_back();
  const size_t chunk_length = static_cast<size_t>(std::max(1, tokenizer.max_length() - 2));
  const int64_t comma = CommaId(tokenizer);

  std::vector<std::vector<int64_t>> chunks;
  std::vector<int64_t> chunk;
  std::ptrdiff_t last_comma = -1;  // position of the last comma in `chunk`
  auto next_chunk = [&] {
    chunks.push_back(Frame(tokenizer, chunk));
    chunk.clear();
    last_comma = -1;
  };
  for (int64_t token : tokens) {
    if (token == comma) {
      last_comma = static_cast<std::ptrdiff_t>(chunk.size());
    } else if (comma_backtrack != 0 && chunk.size() == chunk_length && last_comma != -1 &&
               static_cast<std::ptrdiff_t>(chunk.size()) - last_comma <= comma_backtrack) {
      // Move the words after the comma to the next chunk.
      std::vector<int64_t> moved(chunk.begin() + last_comma + 1, chunk.end());
      chunk.resize(static_cast<size_t>(last_comma) + 1);
      next_chunk();
      chunk = std::move(moved);
    }
    if (chunk.size() == chunk_length) next_chunk();
    chunk.push_back(token);
  }
  if (!chunk.empty() || chunks.empty()) next_chunk();
  return chunks;
}

std::vector<int64_t> EmptyChunk(const ClipTokenizer& tokenizer) { return Frame(tokenizer, {}); }

}  // namespace sdfarm::engine
