// sdfarm-mkmodel: writes a Stable Diffusion model with seeded random weights
// in the diffusers layout from a folder of configs (e.g.
// ../shared/models/configs/sd15), so benchmarks and demos run at real scale
// without downloaded weights.
#ifndef SDFARM_WORKER_TOOLS_MKMODEL_COMMAND_H_
#define SDFARM_WORKER_TOOLS_MKMODEL_COMMAND_H_

namespace sdfarm::tools {

// Returns the process exit code: 0 success, 1 runtime failure, 2 usage error.
int RunMkModel(int argc, char** argv);

}  // namespace sdfarm::tools

#endif  // SDFARM_WORKER_TOOLS_MKMODEL_COMMAND_H_
