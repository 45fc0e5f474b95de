// Reading and writing .safetensors files with LibTorch tensors.
//
// Reading maps the file with mmap: Get() returns a CPU tensor that views the
// mapped bytes (no copy; the mapping lives as long as any such tensor), so the
// loader can move each weight straight to its device and dtype with one
// `.to()`. The header is fully validated on Open (safetensors_header.h).
//
//   ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
//   ASSIGN_OR_RETURN(at::Tensor w, file->Get("conv_in.weight"));
#ifndef SDFARM_WORKER_ENGINE_SAFETENSORS_H_
#define SDFARM_WORKER_ENGINE_SAFETENSORS_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "worker/engine/safetensors_header.h"
#include "worker/engine/status.h"

namespace sdfarm::engine {

class SafetensorsFile {
 public:
  static StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<StTensorInfo>& tensors() const { return header_.tensors; }
  const StTensorInfo* Find(const std::string& name) const;

  // A CPU tensor over the mapped bytes in the file's dtype. Copied only when
  // the data is not aligned for its element type.
  StatusOr<at::Tensor> Get(const std::string& name) const;

  // Tells the kernel this process is done with the tensor's bytes for now:
  // they leave its resident set (and are read again from the page cache if a
  // view touches them later). The loader calls it after copying each weight,
  // so peak memory is the model plus one tensor, not the model twice.
  void DropPages(const StTensorInfo& info) const;

 private:
  struct Mapping;
  SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping, SafetensorsHeader header);

  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Writes the tensors (any device; made contiguous and copied to CPU) in the
// given order. Written to `path + ".tmp"` and renamed, so a reader never sees
// a partial file.
Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Reads a whole file into owned CPU tensors (tests, small files).
StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(const std::string& path);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SAFETENSORS_H_
