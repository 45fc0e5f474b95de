// Fuzzes ParseSafetensorsHeader (worker/engine/safetensors_header.h), the
// only code that reads a .safetensors file's untrusted header.
//
// The input is the start of a file: u64 little-endian N, then the JSON. It is
// parsed as the whole file (offsets must fit in what follows the header) and
// as the start of a much larger file (offsets may point far past the input).
// Whatever parses must satisfy the documented guarantees, and must survive a
// SerializeSafetensorsHeader -> ParseSafetensorsHeader round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "worker/engine/safetensors_header.h"

namespace {

using sdfarm::engine::ParseSafetensorsHeader;
using sdfarm::engine::SafetensorsHeader;
using sdfarm::engine::SerializeSafetensorsHeader;
using sdfarm::engine::StDtypeSize;
using sdfarm::engine::StTensorInfo;

void CheckHeader(const SafetensorsHeader& h, uint64_t file_size) {
  FUZZ_CHECK(h.data_start >= 8 && h.data_start <= file_size);
  const uint64_t data_size = file_size - h.data_start;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const StTensorInfo& t = h.tensors[i];
    FUZZ_CHECK(t.begin <= t.end && t.end <= data_size);
    const int64_t numel = t.numel();  // UBSan: no signed overflow
    FUZZ_CHECK(numel >= 0);
    FUZZ_CHECK(t.end - t.begin == static_cast<uint64_t>(numel) * StDtypeSize(t.dtype));
    if (i > 0) {
      const StTensorInfo& p = h.tensors[i - 1];
      FUZZ_CHECK(p.begin <= t.begin);  // offset order
      FUZZ_CHECK(t.begin >= p.end || t.begin == t.end || p.begin == p.end);  // no overlap
    }
  }
}

void RoundTrip(const SafetensorsHeader& h) {
  std::vector<StTensorInfo> tensors = h.tensors;
  const std::string bytes = SerializeSafetensorsHeader(tensors, h.metadata);
  FUZZ_CHECK(bytes.size() % 8 == 0);
  const uint64_t data = tensors.empty() ? 0 : tensors.back().end;
  auto again = ParseSafetensorsHeader(bytes, bytes.size() + data);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->data_start == bytes.size());
  FUZZ_CHECK(again->metadata == h.metadata);
  FUZZ_CHECK(again->tensors.size() == h.tensors.size());
  // Tensors laid out back to back keep their relative order, except that
  // empty ones may move among tensors sharing their offset.
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StTensorInfo& a = again->tensors[i];
    if (a.begin == a.end) continue;
    FUZZ_CHECK(a.name == tensors[i].name || tensors[i].begin == tensors[i].end);
  }
  for (const StTensorInfo& t : tensors) {
    bool found = false;
    for (const StTensorInfo& a : again->tensors) {
      if (a.name != t.name) continue;
      found = true;
      FUZZ_CHECK(a.dtype == t.dtype && a.shape == t.shape && a.begin == t.begin && a.end == t.end);
    }
    FUZZ_CHECK(found);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view prefix(reinterpret_cast<const char*>(data), size);
  for (uint64_t file_size : {uint64_t{size}, uint64_t{size} + (uint64_t{1} << 40)}) {
    auto header = ParseSafetensorsHeader(prefix, file_size);
    if (!header.ok()) continue;
    CheckHeader(*header, file_size);
    RoundTrip(*header);
  }
  return 0;
}
