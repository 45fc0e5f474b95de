// Named parameter slots and loading them from safetensors files.
//
// Every model module declares its parameters into a ParamSet under the exact
// names diffusers / transformers use ("down_blocks.0.resnets.1.conv1.weight"),
// with their shapes. LoadParams then fills every slot from the files, moving
// each tensor straight from the mmap to the target device and dtype, and
// insists on a perfect match: a missing tensor, a tensor of the wrong shape
// and a tensor in the file that no slot takes are all errors naming the
// tensor. Because slots know their shapes, the same declarations let
// sdfarm-mkmodel create random weights without any checkpoint.
//
//   ParamSet params;
//   unet.Declare(params);                 // modules add "name" -> (&slot, shape)
//   RETURN_IF_ERROR(LoadParams(params, {file}, device, dtype));
#ifndef SDFARM_WORKER_ENGINE_WEIGHTS_H_
#define SDFARM_WORKER_ENGINE_WEIGHTS_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "worker/engine/safetensors.h"
#include "worker/engine/status.h"
#include "worker/engine/tensor_source.h"

namespace sdfarm::engine {

struct ParamSlot {
  std::string name;                  // canonical (current diffusers) name
  std::vector<int64_t> shape;
  at::Tensor* tensor = nullptr;      // filled by LoadParams / RandomizeParams
  std::vector<std::string> aliases;  // legacy names accepted in files (old VAE attention)
  // Initialisation for random weights (sdfarm-mkmodel): "normal" (std 0.02), "ones", "zeros".
  std::string init = "normal";
};

class ParamSet {
 public:
  // `prefix` is prepended with a dot to the names added through the returned scope.
  class Scope {
   public:
    Scope(ParamSet* set, std::string prefix) : set_(set), prefix_(std::move(prefix)) {}
    Scope Sub(const std::string& name) const { return Scope(set_, Join(name)); }
    Scope Sub(int index) const { return Sub(std::to_string(index)); }
    ParamSlot& Add(const std::string& name, std::vector<int64_t> shape, at::Tensor* slot,
                   const std::string& init = "normal") const;
    std::string Join(const std::string& name) const { return prefix_.empty() ? name : prefix_ + "." + name; }
    ParamSet* set() const { return set_; }

   private:
    ParamSet* set_;
    std::string prefix_;
  };

  Scope Root() { return Scope(this, ""); }
  std::vector<ParamSlot>& slots() { return slots_; }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  int64_t NumElements() const;

 private:
  friend class Scope;
  std::vector<ParamSlot> slots_;
};

// Tensors some real checkpoints carry that are buffers, not parameters: they
// are accepted and ignored.
bool IsIgnorableBuffer(const std::string& name);

// Fills every slot from `files` (tensors may be spread across them). Errors:
// NotFound for a missing tensor, InvalidArgument for a shape mismatch or a
// tensor no slot takes; the message names the tensor and the file. LibTorch
// exceptions (e.g. CUDA out of memory: ResourceExhausted) become a Status.
Status LoadParams(ParamSet& params, const std::vector<std::shared_ptr<SafetensorsFile>>& files,
                  const at::Device& device, at::ScalarType dtype);
// The same from any tensor source (tensor_source.h): renamed or computed
// tensors of other checkpoint layouts. Messages name the stored key too.
Status LoadParams(ParamSet& params, const TensorSource& source, const at::Device& device, at::ScalarType dtype);

// Fills every slot with seeded random values (sdfarm-mkmodel, benchmarks).
void RandomizeParams(ParamSet& params, uint64_t seed, const at::Device& device, at::ScalarType dtype);

// Turns an exception from LibTorch into a Status: out-of-memory becomes
// ResourceExhausted, everything else Internal, with `what` as context.
Status StatusFromException(const std::exception& e, const std::string& what);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_WEIGHTS_H_
