// CPU time, for the load generators: another process's, for --server-pid (the server's own cost,
// which the client's limits cannot cap), and the load generator's own.
#pragma once

#include <cstdio>
#include <cstring>

#include <sys/resource.h>
#include <unistd.h>

namespace skein_bench {

// CPU seconds (user + system) process `pid` has used, from /proc/PID/stat; -1 if unreadable.
inline double process_cpu_seconds(long pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  std::FILE* f = std::fopen(path, "r");
  if (!f) return -1;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name may hold spaces and parentheses: fields are counted after its last ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p) return -1;
  unsigned long long utime = 0, stime = 0;
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
    return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds (user + system) this process has used, all its threads.
inline double self_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace skein_bench
