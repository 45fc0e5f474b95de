#include "worker/tools/render_command.h"

int main(int argc, char** argv) { return sdfarm::tools::RunRender(argc, argv); }
