// sdfarm-render: renders images on this machine with the engine and writes
// them as PNGs with AUTOMATIC1111 `parameters` metadata. main() only calls
// RunRender; the work is here so the logic reads as one unit.
#ifndef SDFARM_WORKER_TOOLS_RENDER_COMMAND_H_
#define SDFARM_WORKER_TOOLS_RENDER_COMMAND_H_

#include <string>

#include "worker/engine/engine.h"

namespace sdfarm::tools {

// sdfarm-render's defaults, also what tests/bench measures as "a render with
// the defaults". The sampler is the farm's default (coordinator/sweep_spec.h).
inline constexpr char kRenderDefaultSampler[] = "euler_a";
inline constexpr int kRenderDefaultSteps = 30;
inline constexpr double kRenderDefaultGuidance = 7.5;

// Parses a --lora value, PATH[:SCALE]: the text after the last ':' is the
// scale when it is a number (paths may hold ':'), else the whole value is
// the path and the scale is 1.
engine::StatusOr<engine::LoraRef> ParseLoraArg(const std::string& arg);

// Returns the process exit code: 0 success, 1 runtime failure, 2 usage error.
int RunRender(int argc, char** argv);

}  // namespace sdfarm::tools

#endif  // SDFARM_WORKER_TOOLS_RENDER_COMMAND_H_
