// Command-line parsing shared by every PAC tool (CLI11, header-only).
#pragma once
#include <CLI/CLI.hpp>

namespace pac {

// Parses argv into `app`. Returns -1 when the tool should go on; otherwise the exit
// code to return at once: 0 after --help, 2 for a bad option (CLI11 has printed why).
//   if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
inline int cli_parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return -1;
}

}  // namespace pac
