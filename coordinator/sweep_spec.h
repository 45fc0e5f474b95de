// SweepSpec: what a user asks the farm to render, parsed from a YAML or JSON
// spec file (or built by the client from flags) and validated before anything
// is queued. A sweep is the Cartesian product (or, on request, the zip) of its
// lists; SweepExpander (sweep_expander.h) turns a validated spec into items
// and jobs by index without materialising them.
//
// Usage:
//   ASSIGN_OR_RETURN(SweepSpec spec, ParseSweepFile("fox.yaml", SweepLimits{}, /*random_seed=*/1234));
//   nlohmann::json wire = spec.ToJson();          // canonical form, what travels to the coordinator
//   ASSIGN_OR_RETURN(SweepSpec same, SweepSpec::FromJson(wire, SweepLimits{}, 0));
//
// Spec file format (YAML shown; JSON takes the same fields). Every list field
// also takes a single value, and has a singular alias (`prompt`, `seed`, ...);
// giving both spellings of one field is an error, and so is any unknown field,
// so a typo never silently falls back to a default.
//
//   name: fox-study                # required; output folder: [A-Za-z0-9._-], 1..100 chars, no leading '.'
//   model: sd15                    # required; model name as workers register it (same charset)
//   prompts:                       # required (prompt / prompts / prompts_file)
//     - a red fox in the snow
//     - an oil painting of a fox
//   prompts_file: more.txt         # one prompt per line, blank lines skipped; path relative to the spec
//                                  # file's folder; appended after `prompts`. File only, see below.
//   negative_prompt: blurry        # default ""; negative_prompts_file works like prompts_file
//   seeds: "0-99,1000"             # required; int, "a-b" ranges, "random:N", or a list of those
//   guidance_scales: [5, 7.5]      # default 7.5; each in [0, 100]
//   steps: 30                      # default 30; each in [1, max_steps]
//   samplers: [euler_a, dpmpp_2m]  # default euler_a; pndm ddim euler euler_a lms dpmpp_2m dpmpp_2m_karras ddpm
//   sizes: [512x512, 768x512]      # "WxH", or N for NxN, or {width: W, height: H}; `width: W` + `height: H`
//                                  # is a single size. Sides: multiples of 8 in [64, max_side]. Default: the
//                                  # model's own size (diffusers' default: 1024x1024 for SDXL base, 512x512
//                                  # for SD 1.5), which the coordinator fills in at Submit from what its
//                                  # workers report (coordinator/default_size.h); 512x512 where unknown
//   images_per_combination: 2      # default 1: seed s renders seeds s, s+1, ..., s+N-1
//   combine: product               # product (default) or zip: lists advance together, length-1 lists broadcast
//   priority: 1                    # 1..100, weight for the fair share between sweeps
//   loras: [[], style:0.5, [style:1, detail:0.3]]
//                                  # default [[]] (none): an axis of LoRA sets. Each entry is one set:
//                                  # a list of LoRAs, or a single LoRA; a LoRA is "name" (scale 1),
//                                  # "name:scale" or {name: N, scale: S}; scale in [-10, 10].
//                                  # Workers find <name>.safetensors (or <name>/) in their --lora-dir.
//   vae: vae-ft-mse                # default: the workers' own; a VAE from the workers' --vae-dir
//   prompt_chunking: true          # default false: prompts over 75 tokens are cut (and warned about);
//                                  # true: encoded in chunks of 75 tokens as AUTOMATIC1111 does
//
// SDXL models (diffusers StableDiffusionXLPipeline folders) take these too;
// each list is a sweep axis like guidance_scales (a worker serving another
// model refuses a job that sets them):
//   prompts_2: [oil painting]      # default [""]: text_encoder_2 reads the prompt
//   negative_prompts_2: [cartoon]  # default [""]: text_encoder_2 reads the negative prompt
//   original_sizes: [1024x1024, 2048x2048]
//                                  # micro-conditioning, "WxH" (diffusers' original_size is (h, w));
//   target_sizes: [1024x1024]      # default: the image size. Sides in [1, 65536]
//   crops_top_left: ["0,0", "64,0"]  # "TOP,LEFT", default "0,0"
//   negative_original_size: 512x512  # single values for the negative branch; used only when
//   negative_target_size: 512x512    # both sizes are given, as in diffusers
//   negative_crop_top_left: "0,0"
//   guidance_rescales: [0, 0.7]    # diffusers' guidance_rescale in [0, 1], any model; default 0
//
// `random:N` draws N distinct seeds in [0, 2^32) from std::mt19937_64 seeded
// with the random_seed argument, so the same spec and random_seed always give
// the same seeds; the concrete seeds are what ToJson() records.
//
// prompts_file / negative_prompts_file are read only by ParseSweepFile and
// ParseSweepText (the client side, where the file is). FromJson rejects them:
// it is the coordinator's entry point for specs from the network, and a remote
// user must not be able to make the coordinator read its own files.
#ifndef SDFARM_COORDINATOR_SWEEP_SPEC_H_
#define SDFARM_COORDINATOR_SWEEP_SPEC_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job_payload.h"

namespace sdfarm::coordinator {

// Bounds that keep one sweep from exhausting the coordinator or the workers.
struct SweepLimits {
  int64_t max_images = 10'000'000;  // items in the whole sweep
  int max_prompt_chars = 4000;      // Unicode code points per (negative) prompt
  int max_side = 2048;              // pixels
  int max_steps = 1000;
  int max_list = 100000;  // entries in any one list (prompts, seeds, ...); also caps images_per_combination
};

struct Size {
  int width = 512;
  int height = 512;
  friend bool operator==(const Size&, const Size&) = default;
};

// SDXL's crops_coords_top_left.
struct Crop {
  int top = 0;
  int left = 0;
  friend bool operator==(const Crop&, const Crop&) = default;
};

// The sampler names workers accept, in the order the README lists them.
const std::vector<std::string>& ValidSamplers();

struct SweepSpec {
  enum class Combine { kProduct, kZip };

  std::string name;   // output folder name
  std::string model;  // model name as workers register it
  std::vector<std::string> prompts;
  std::vector<std::string> negative_prompts = {""};
  std::vector<uint64_t> seeds;  // concrete: random:N is drawn at parse time
  std::vector<double> guidance_scales = {7.5};
  std::vector<int> steps = {30};
  std::vector<std::string> samplers = {"euler_a"};
  std::vector<Size> sizes = {Size{512, 512}};
  // The spec names no size: render at the model's own size. `sizes` holds
  // the 512x512 stand-in until the coordinator fills in the size
  // (FillDefaultSize, default_size.h); ToJson leaves "sizes" out meanwhile,
  // so the spec travels as "no size". Every stored sweep has it false.
  bool size_from_model = false;
  // Each seed s of a combination yields this many images, with seeds
  // s, s+1, ..., s+images_per_combination-1 (as sdfarm-render's
  // --images-per-prompt does), so every image stays reproducible on its own.
  int images_per_combination = 1;
  Combine combine = Combine::kProduct;
  int priority = 1;  // 1..100
  // LoRA sets, an axis like samplers: a job never mixes two sets. {{}}: no LoRA.
  std::vector<std::vector<LoraUse>> loras = {{}};
  std::string vae;  // empty: the workers' own
  bool prompt_chunking = false;  // A1111-style chunks of 75 tokens instead of cutting at 77
  // SDXL (see the format above). Size{0, 0}: the image size.
  std::vector<std::string> prompts_2 = {""};
  std::vector<std::string> negative_prompts_2 = {""};
  std::vector<Size> original_sizes = {Size{0, 0}};
  std::vector<Crop> crops_top_left = {Crop{}};
  std::vector<Size> target_sizes = {Size{0, 0}};
  Size negative_original_size{0, 0}, negative_target_size{0, 0};
  Crop negative_crop_top_left;
  std::vector<double> guidance_rescales = {0};

  // Canonical JSON: plural field names, concrete seeds, sizes as "WxH" (none while size_from_model),
  // LoRAs as "name:scale"; loras, vae, prompt_chunking and the SDXL fields only when set (so a spec without
  // them reads exactly as before they existed).
  // FromJson(ToJson()) gives back an equal spec.
  nlohmann::json ToJson() const;
  // Reads the spec format above (no *_file fields) and validates the result.
  static absl::StatusOr<SweepSpec> FromJson(const nlohmann::json& json, const SweepLimits& limits,
                                            uint64_t random_seed);

  friend bool operator==(const SweepSpec&, const SweepSpec&) = default;
};

// Parses a .json, .yaml or .yml spec file; prompts_file paths are relative to
// its folder. Returns a validated spec.
absl::StatusOr<SweepSpec> ParseSweepFile(const std::string& path, const SweepLimits& limits, uint64_t random_seed);

// Parses spec text (YAML when `yaml`, else JSON); prompts_file paths are
// relative to the current directory. Returns a validated spec.
absl::StatusOr<SweepSpec> ParseSweepText(std::string_view text, bool yaml, const SweepLimits& limits,
                                         uint64_t random_seed);

// Parses a seed list: comma-separated entries, each a seed ("42"), an
// inclusive range ("0-999") or "random:N" (see above). Fails when the list
// would hold more than max_count seeds, before materialising it.
absl::StatusOr<std::vector<uint64_t>> ParseSeeds(std::string_view text, uint64_t random_seed, int64_t max_count);

// Checks everything the farm relies on: name and model cannot leave the
// output root or the model folder, prompts are non-empty valid UTF-8 within
// the length limit, sizes/steps/guidance/samplers/priority are in range, zip
// lists have equal lengths (length 1 broadcasts), seed + images_per_combination
// does not overflow, and the image count is within max_images.
absl::Status Validate(const SweepSpec& spec, const SweepLimits& limits);

// Number of images the spec renders, saturating at INT64_MAX; 0 if a list is
// empty. For zip specs with unequal list lengths, uses the longest list.
int64_t CountImages(const SweepSpec& spec);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_SWEEP_SPEC_H_
