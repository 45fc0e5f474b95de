#include "worker/tools/mkmodel_command.h"

int main(int argc, char** argv) { return sdfarm::tools::RunMkModel(argc, argv); }
