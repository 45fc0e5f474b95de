// AUTOMATIC1111's prompt chunking: a prompt longer than CLIP's window is split
// into chunks of 75 tokens, each framed by its own BOS/EOS and padded to 77,
// so that every chunk can be encoded on its own and the embeddings
// concatenated along the sequence axis ([B, 77 * chunks, hidden]).
//
//   std::vector<std::vector<int64_t>> chunks = ChunkPromptIds(tokenizer, prompt);
//   // chunks.size() >= 1, each of tokenizer.max_length() ids
//
// The rules are those of stable-diffusion-webui's modules/sd_hijack_clip.py
// (FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line and process_tokens)
// without its emphasis syntax: "(word:1.2)", "[word]" and "BREAK" are plain
// text here and every token has weight 1.0. In order:
//  - The prompt is tokenized without BOS/EOS and without truncation.
//  - Tokens fill a chunk up to 75. When a 76th token arrives and the chunk
//    holds a comma among its last `comma_backtrack` (A1111's
//    "comma_padding_backtrack", default 20) tokens, the tokens after that
//    comma move on to the next chunk (so a phrase is not cut in two), unless
//    the arriving token is itself a comma.
//  - A chunk is framed and padded: BOS + its tokens + EOS, then the pad id
//    up to 77 (EOS for SD 1.x; "!" for SD 2.x, where A1111's process_tokens
//    replaces the EOS padding after the first EOS with the pad id). One
//    deliberate difference: a literal "<|endoftext|>" inside an SD 2.x prompt
//    does not blank the tokens after it, as it does in A1111.
//  - An empty prompt is one chunk: BOS, EOS, padding (EmptyChunk).
// A prompt of at most 75 tokens therefore gives exactly the ids of
// ClipTokenizer::EncodePadded.
#ifndef SDFARM_WORKER_ENGINE_PROMPT_CHUNKS_H_
#define SDFARM_WORKER_ENGINE_PROMPT_CHUNKS_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "worker/engine/clip_tokenizer.h"

namespace sdfarm::engine {

// A1111's default for "comma_padding_backtrack" (shared_options.py).
inline constexpr int kA1111CommaPaddingBacktrack = 20;

// The chunks of `text`, each of tokenizer.max_length() ids. comma_backtrack 0
// disables the comma rule.
std::vector<std::vector<int64_t>> ChunkPromptIds(const ClipTokenizer& tokenizer, std::string_view text,
                                                 int comma_backtrack = kA1111CommaPaddingBacktrack);

// The chunk that pads a shorter prompt to the chunk count of a longer one
// (A1111's empty_chunk): the ids of an empty prompt.
std::vector<int64_t> EmptyChunk(const ClipTokenizer& tokenizer);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_PROMPT_CHUNKS_H_
