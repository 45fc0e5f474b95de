// Parsing and validation of a safetensors header, without LibTorch.
//
// A safetensors file is: u64 little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {str: str}}), then the raw little-endian tensor bytes.
// Offsets are relative to the start of the data section.
//
// ParseSafetensorsHeader checks everything that can lie: the length prefix,
// the JSON, dtypes, shapes, that every [begin, end) fits in the file, matches
// shape x element size, and overlaps no other tensor. It is the fuzzing entry
// point for the format; safetensors.h builds tensors on top of it.
#ifndef SDFARM_WORKER_ENGINE_SAFETENSORS_HEADER_H_
#define SDFARM_WORKER_ENGINE_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

enum class StDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

std::string_view StDtypeName(StDtype dtype);     // "F32"
int StDtypeSize(StDtype dtype);                  // bytes per element
bool ParseStDtype(std::string_view name, StDtype* out);

struct StTensorInfo {
  std::string name;
  StDtype dtype = StDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offset into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header length: where offsets count from
  std::vector<StTensorInfo> tensors;               // in file (offset) order
  std::map<std::string, std::string> metadata;     // "__metadata__"
};

// `prefix` holds at least the first min(file_size, 8 + N) bytes of the file.
// Header lengths above 100 MB are rejected (the reference implementation's limit).
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view prefix, uint64_t file_size);

// Serialises a header for tensors laid out back to back in the given order.
// Fills in begin/end. The result includes the 8-byte length prefix and is
// padded with spaces to a multiple of 8 bytes, as the reference writer does.
std::string SerializeSafetensorsHeader(std::vector<StTensorInfo>& tensors,
                                       const std::map<std::string, std::string>& metadata);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SAFETENSORS_HEADER_H_
