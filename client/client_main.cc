// sdfarm: the farm's command-line client. The commands live in
// client/commands.h (and local_mode.h), where the tests reach them.
#include "client/commands.h"

int main(int argc, char** argv) { return sdfarm::client::RunCli(argc, argv); }
