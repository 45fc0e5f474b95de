// Where LoadParams (weights.h) takes its tensors from: a list of named tensors
// with their shapes and dtypes, each produced on demand.
//
// A diffusers weights file offers its tensors under the names the modules
// declare. Other layouts do not: a single-file LDM checkpoint names the UNet
// "model.diffusion_model.input_blocks.1.0.in_layers.0.weight", stores the
// OpenCLIP text encoder's q/k/v as one `in_proj_weight`, and a text encoder
// saved by transformers 5 drops the "text_model." prefix. A TensorSource
// puts any of them under the canonical names, so LoadParams keeps its perfect
// match rule: every tensor a source offers must be taken by a slot. A source
// also lists what it deliberately leaves out (EMA copies, schedule buffers),
// so the rule is explicit per source instead of a global exception list.
//
//   ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
//   TensorSource src = TensorSource::FromFile(file);                  // names as stored
//   TensorSource te = src.Renamed([](const std::string& n) { return "text_model." + n; });
//   RETURN_IF_ERROR(LoadParams(params, te, device, dtype));
#ifndef SDFARM_WORKER_ENGINE_TENSOR_SOURCE_H_
#define SDFARM_WORKER_ENGINE_TENSOR_SOURCE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/safetensors.h"
#include "worker/engine/status.h"

namespace sdfarm::engine {

class TensorSource {
 public:
  struct Entry {
    std::string name;              // the canonical (diffusers / transformers) name offered
    std::vector<int64_t> shape;
    StDtype dtype = StDtype::kF32;
    std::string file;              // for messages: the file it comes from
    std::string stored_as;         // for messages: its key in that file (== name for plain files)
    std::function<StatusOr<at::Tensor>()> get;  // a CPU tensor (may view an mmap)
    std::function<void()> done;    // called once the tensor was copied (may be empty)
  };

  // Every tensor of the files under its stored name. InvalidArgument when two
  // files hold the same name.
  static StatusOr<TensorSource> FromFiles(const std::vector<std::shared_ptr<SafetensorsFile>>& files);
  static TensorSource FromFile(const std::shared_ptr<SafetensorsFile>& file);
  // One entry of `file` under another name.
  static Entry FileEntry(const std::shared_ptr<SafetensorsFile>& file, const StTensorInfo& info, std::string name);

  // InvalidArgument when the name is already offered.
  Status Add(Entry entry);
  // Records a stored tensor this source leaves out on purpose (listed for
  // tests and messages; it is never loaded).
  void Ignore(std::string stored_name) { ignored_.push_back(std::move(stored_name)); }

  // The same tensors under new names (`rename` gets the current name).
  StatusOr<TensorSource> Renamed(const std::function<std::string(const std::string&)>& rename) const;

  const std::vector<Entry>& entries() const { return entries_; }
  const std::vector<std::string>& ignored() const { return ignored_; }
  const Entry* Find(const std::string& name) const;
  bool empty() const { return entries_.empty(); }
  // The file(s) behind the source, for messages.
  std::string description() const;

 private:
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
  std::vector<std::string> ignored_;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_TENSOR_SOURCE_H_
