// The AUTOMATIC1111 "parameters" text: how a rendered image records the
// settings that made it, in the PNG text chunk that A1111's PNG Info tab,
// Civitai, InvokeAI's import and sd-parsers all read.
//
//   a photo of a cat, <lora:x:0.5>
//   Negative prompt: blurry
//   Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 1a2b3c4d5e, Model: sd15, Denoising strength: 0.6, Clip skip: 2, Version: sdfarm 0.1.0
//
// Format follows A1111's processing.create_infotext: the prompt, a
// "Negative prompt: " line only when there is one, and one line of
// "Key: value" pairs joined by ", " in A1111's order (Steps, Sampler,
// Schedule type, CFG scale, Seed, Size, Model hash, Model, VAE hash, VAE, Denoising strength,
// Clip skip, then `extra` in order, e.g. "Lora hashes" and "Version"). A value holding ',', ':' or a newline is written as a
// JSON string (infotext_utils.quote); so is one that A1111's parser would
// otherwise read back differently (leading or trailing spaces, a leading '"',
// control characters), which A1111 reads back correctly.
// Parse follows infotext_utils.parse_generation_parameters: the last line is
// the parameter line if it holds at least 3 "Key: value" pairs; lines before
// it are the prompt up to a line starting "Negative prompt:", then the
// negative prompt; every line is stripped of surrounding whitespace.
//
//   std::string text = FormatA1111Parameters(params);
//   RETURN_IF_ERROR(WritePngAtomic(path, image, {{"parameters", text}}));
//
// Round trip: ParseA1111Parameters(FormatA1111Parameters(p)) == p for every
// p whose prompt lines have no leading/trailing whitespace, no prompt line
// starts with "Negative prompt:", and whose extra keys are valid A1111 keys
// (a word character, then word characters, spaces, '-' or '/'; at least two
// characters; not one of the named fields). A1111 itself loses the rest too.
#ifndef SDFARM_WORKER_ENGINE_A1111_PARAMETERS_H_
#define SDFARM_WORKER_ENGINE_A1111_PARAMETERS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

struct GenerationParameters {
  std::string prompt, negative_prompt;
  int steps = 0;
  std::string sampler;  // A1111's sampler name, e.g. "Euler a", "DPM++ 2M" (engine::A1111Name)
  // A1111's "Schedule type" (v1.9+), e.g. "Automatic", "Karras", "Uniform";
  // written right after "Sampler", omitted when empty. A1111 reads a missing
  // one as "Automatic", which for "DPM++ 2M" means Karras.
  std::string schedule_type;
  double cfg_scale = 0;
  uint64_t seed = 0;
  int width = 0, height = 0;
  std::string model_hash, model;  // omitted from the text when empty
  std::string vae_hash, vae;      // a swapped VAE (A1111 writes both after Model); omitted when empty
  std::optional<double> denoising_strength;
  // Written whenever set, also for 1 (A1111 omits clip skip <= 1 and reads a
  // missing one as 1; leave it unset to get A1111's text exactly).
  std::optional<int> clip_skip;
  // Further "Key: value" pairs, appended in order (e.g. {"Version", "sdfarm 0.1.0"}).
  // On parse: every pair that is not one of the fields above.
  std::vector<std::pair<std::string, std::string>> extra;

  friend bool operator==(const GenerationParameters&, const GenerationParameters&) = default;
};

std::string FormatA1111Parameters(const GenerationParameters& p);

// InvalidArgument when the text has no parameter line (fewer than 3 pairs on
// its last line) or when Steps, CFG scale, Seed, Size, Denoising strength or
// Clip skip has a value that is not a number (Size: "<w>x<h>"). Named fields
// that are missing keep their defaults; a repeated key keeps its last value.
StatusOr<GenerationParameters> ParseA1111Parameters(std::string_view text);

// A number as A1111's UI writes it: whole values without a fractional part
// (7.0 -> "7": the web UI passes whole slider values to Python as ints, hence
// "CFG scale: 7"), others as Python's repr() (shortest round-trip digits:
// 7.5 -> "7.5", 0.1 -> "0.1", 1e-05 -> "1e-05", 1e+16 -> "1e+16").
std::string FormatNumber(double v);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_A1111_PARAMETERS_H_
