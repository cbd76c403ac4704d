// The samples that do I/O check the I/O backend SKEIN_IO asks for before their runtime starts
// (cli.hpp stays free of skein: the benchmarks' baseline servers share it).
#pragma once

#include "cli.hpp"

#include <skein/net.hpp>

#include <cstdio>
#include <cstdlib>
#include <system_error>

namespace skein_samples::cli {

// Exits with status 2 and the reason if SKEIN_IO names an I/O backend this process cannot use
// (misspelt, or io_uring where the kernel refuses it): before the runtime starts, not at its
// first I/O. Call it after the arguments are parsed.
inline void check_io_backend() {
  try {
    skein::resolve_io_backend();
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    std::exit(2);
  }
}

}  // namespace skein_samples::cli
