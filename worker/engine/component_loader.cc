#include "worker/engine/component_loader.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/json_util.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace fs = std::filesystem;
namespace {

template <typename Module, typename Config>
StatusOr<std::unique_ptr<Module>> LoadModule(const std::string& component_dir, const std::string& weights_base,
                                             const at::Device& device, at::ScalarType dtype,
                                             std::map<std::string, at::Tensor*>* named = nullptr) {
  const std::string config_path = component_dir + "/config.json";
  ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(config_path));
  ASSIGN_OR_RETURN(Config config, Config::FromJson(j, config_path));
  const std::string variant = dtype == at::kHalf ? "fp16" : "";
  ASSIGN_OR_RETURN(std::string weights, FindWeightsFile(component_dir, weights_base, variant));
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights));
  auto module = std::make_unique<Module>(std::move(config));
  ParamSet params;
  try {
    module->Declare(params.Root());
  } catch (const std::exception& e) {
    return StatusFromException(e, config_path);
  }
  RETURN_IF_ERROR(LoadParams(params, {file}, device, dtype));
  if (named != nullptr) {
    for (const auto& slot : params.slots()) (*named)[slot.name] = slot.tensor;
  }
  return module;
}

// XXH64 (Yann Collet's xxHash, 64-bit variant), streamed over a file.
constexpr uint64_t kP1 = 11400714785074694791ULL, kP2 = 14029467366897019727ULL, kP3 = 1609587929392839161ULL,
                   kP4 = 9650029242287828579ULL, kP5 = 2870177450012600261ULL;
inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Round(uint64_t acc, uint64_t in) { return Rotl(acc + in * kP2, 31) * kP1; }
inline uint64_t Merge(uint64_t acc, uint64_t v) { return (acc ^ Round(0, v)) * kP1 + kP4; }
inline uint64_t Read64(const unsigned char* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline uint32_t Read32(const unsigned char* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }

}  // namespace

StatusOr<uint64_t> HashFile(const std::string& path, uint64_t seed) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return NotFoundError("cannot open " + path);
  uint64_t v[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
  uint64_t total = 0;
  std::vector<unsigned char> buf(1 << 22);
  size_t carry = 0;  // bytes left over (< 32) at the start of buf
  bool any_stripe = false;
  while (true) {
    size_t got = std::fread(buf.data() + carry, 1, buf.size() - carry, f);
    size_t avail = carry + got;
    total += got;
    size_t i = 0;
    for (; i + 32 <= avail; i += 32) {
      const unsigned char* p = buf.data() + i;
      v[0] = Round(v[0], Read64(p));
      v[1] = Round(v[1], Read64(p + 8));
      v[2] = Round(v[2], Read64(p + 16));
      v[3] = Round(v[3], Read64(p + 24));
      any_stripe = true;
    }
    carry = avail - i;
    std::memmove(buf.data(), buf.data() + i, carry);
    if (got == 0) break;
  }
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  if (read_error) return DataLossError("read error on " + path);
  uint64_t h;
  if (any_stripe) {
    h = Rotl(v[0], 1) + Rotl(v[1], 7) + Rotl(v[2], 12) + Rotl(v[3], 18);
    for (uint64_t x : v) h = Merge(h, x);
  } else {
    h = seed + kP5;
  }
  h += total;
  const unsigned char* p = buf.data();
  size_t len = carry;
  while (len >= 8) { h = Rotl(h ^ Round(0, Read64(p)), 27) * kP1 + kP4; p += 8; len -= 8; }
  if (len >= 4) { h = Rotl(h ^ (uint64_t{Read32(p)} * kP1), 23) * kP2 + kP3; p += 4; len -= 4; }
  while (len > 0) { h = Rotl(h ^ (*p * kP5), 11) * kP1; ++p; --len; }
  h ^= h >> 33; h *= kP2; h ^= h >> 29; h *= kP3; h ^= h >> 32;
  return h;
}

StatusOr<std::string> FindWeightsFile(const std::string& component_dir, const std::string& base,
                                      const std::string& preferred_variant) {
  const std::string plain = component_dir + "/" + base + ".safetensors";
  std::vector<std::string> candidates;
  if (!preferred_variant.empty()) candidates.push_back(component_dir + "/" + base + "." + preferred_variant + ".safetensors");
  candidates.push_back(plain);
  for (const char* v : {"fp16", "bf16"}) candidates.push_back(component_dir + "/" + base + "." + v + ".safetensors");
  for (const auto& c : candidates) {
    if (fs::is_regular_file(c)) return c;
  }
  std::string msg = "no weights in " + component_dir + ": expected " + plain + " (or a .fp16 variant)";
  for (const char* bin : {".bin", ".fp16.bin"}) {
    if (fs::exists(component_dir + "/" + base + bin)) {
      msg += "; found only PyTorch pickle weights (" + base + bin +
             "), which sdfarm does not load: convert them to safetensors";
    }
  }
  return NotFoundError(msg);
}

StatusOr<std::unique_ptr<ClipTextModel>> LoadTextEncoder(const std::string& dir, const at::Device& device,
                                                         at::ScalarType dtype,
                                                         std::map<std::string, at::Tensor*>* params) {
  return LoadModule<ClipTextModel, ClipTextConfig>(dir, "model", device, dtype, params);
}
StatusOr<std::unique_ptr<UNet>> LoadUNet(const std::string& dir, const at::Device& device, at::ScalarType dtype,
                                         std::map<std::string, at::Tensor*>* params) {
  return LoadModule<UNet, UNetConfig>(dir, "diffusion_pytorch_model", device, dtype, params);
}
StatusOr<std::unique_ptr<Vae>> LoadVae(const std::string& dir, const at::Device& device, at::ScalarType dtype) {
  return LoadModule<Vae, VaeConfig>(dir, "diffusion_pytorch_model", device, dtype);
}

}  // namespace sdfarm::engine
