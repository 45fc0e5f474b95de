// SHA-256 (FIPS 180-4), streamed over files: the hashes AUTOMATIC1111 and
// Civitai use to name models ("Model hash", "VAE hash": the first 10 hex
// digits of the file's SHA-256, Civitai's AutoV2) and LoRAs ("Lora hashes":
// the first 12 hex digits of the SHA-256 of a .safetensors file's tensor data,
// skipping the 8-byte length and the JSON header: A1111's addnet hash).
// Torch-free.
//
//   Sha256 h;  h.Update(data, n);  std::string hex = h.HexDigest();
//   ASSIGN_OR_RETURN(std::string hex, Sha256File("model.safetensors"));
#ifndef SDFARM_WORKER_ENGINE_SHA256_H_
#define SDFARM_WORKER_ENGINE_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "worker/engine/status.h"

namespace sdfarm::engine {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // 64 lowercase hex digits. Finishes the hash: call once.
  std::string HexDigest();

 private:
  void Block(const unsigned char* p);
  uint32_t h_[8];
  unsigned char buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

// The SHA-256 of a whole file, or (addnet = true) of a .safetensors file's
// bytes after its header, as A1111 hashes LoRAs. Continues `into` when given
// (several files hashed as one stream); then returns an empty string.
StatusOr<std::string> Sha256File(const std::string& path, bool addnet = false, Sha256* into = nullptr);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SHA256_H_
