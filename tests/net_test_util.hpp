// Shared helpers for the net/ suites: the open-descriptor check every test runs under, error
// capture, forked children with a time limit, connected pairs, byte patterns.
#pragma once

#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <dirent.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace skein_test {

using namespace std::chrono_literals;

// Entries of /proc/self/fd (the directory's own descriptor counts too, the same every time).
inline std::size_t open_fd_count() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return 0;
  std::size_t n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

// The first use of the I/O layer may create process-wide descriptors that live as long as the
// process (a wake-up descriptor for the blocking pool, say). Those are not leaks, so every
// FdCheck starts after one warm-up that touches each part once; a per-use leak still shows.
inline void warm_up_once() {
  static bool done = false;
  if (done) return;
  done = true;
  const std::size_t before = open_fd_count();
  try {
    skein::run([] {
      skein::Listener l = skein::listen(skein::Address::loopback(0));
      skein::Stream c = skein::connect(l.local_address(), 5s);
      skein::Stream s = l.accept(5s);
      char b[1];
      try {
        s.read(b, 1ms);
      } catch (const std::system_error&) {
      }
      skein::run_blocking([] {});
      try {
        skein::resolve("localhost", 1);
      } catch (const std::system_error&) {
      }
    });
  } catch (const std::exception& e) {
    MESSAGE("net warm-up failed: " << e.what());
  }
  const std::size_t after = open_fd_count();
  if (after != before) MESSAGE("descriptors kept open after the first use of net/: " << after - before);
}

// Requires that the test leaves as many descriptors open as it found.
struct FdCheck {
  std::size_t before;
  FdCheck() {
    warm_up_once();
    before = open_fd_count();
  }
  ~FdCheck() {
    const std::size_t after = open_fd_count();
    if (after != before) FAIL_CHECK("descriptor leak: " << before << " open before, " << after << " after");
  }
  FdCheck(const FdCheck&) = delete;
  FdCheck& operator=(const FdCheck&) = delete;
};

// The error code `f` threw as a std::system_error, or a default (success) code.
template <class F>
std::error_code code_of(F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code();
  }
  return {};
}

// For CHECK output: "generic:110 (Connection timed out)".
inline std::string describe(const std::error_code& c) {
  if (!c) return "no error";
  return std::string(c.category().name()) + ":" + std::to_string(c.value()) + " (" + c.message() + ")";
}

inline double ms_since(skein::TimePoint start) {
  return std::chrono::duration<double, std::milli>(skein::Clock::now() - start).count();
}

// Raises the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force.
inline rlim_t raise_fd_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    getrlimit(RLIMIT_NOFILE, &r);
  }
  return r.rlim_cur;
}

// Cancels a task when the scope ends however it ends, so a failed REQUIRE in the main fiber
// cannot leave a server fiber waiting on I/O and skein::run waiting for it forever.
template <class T>
struct CancelOnExit {
  skein::Task<T>& task;
  ~CancelOnExit() { task.cancel(); }
};

// Byte i of a deterministic pattern that differs per seed and has no short period.
inline char pattern_byte(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ (seed * 0xD1B54A32D192ED03ULL);
  x ^= x >> 29;
  return static_cast<char>(x & 0xff);
}

inline std::string pattern(std::uint64_t seed, std::size_t n, std::uint64_t offset = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = pattern_byte(seed, offset + i);
  return s;
}

// A connected stream pair over `at` (a listener is bound there for the handshake only).
struct StreamPair {
  skein::Stream client;
  skein::Stream server;
};

inline StreamPair connected_pair(const skein::Address& at) {
  skein::Listener l = skein::listen(at);
  StreamPair p;
  p.client = skein::connect(l.local_address(), 5s);
  p.server = l.accept(5s);
  return p;
}

// A Unix-domain stream pair from socketpair(2), adopted by Stream.
inline StreamPair socket_pair() {
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  StreamPair p;
  p.client = skein::Stream(fds[0]);
  p.server = skein::Stream(fds[1]);
  return p;
}

// A private directory for Unix socket files, removed with its contents afterwards.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/skein-net-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

// A unique abstract Unix socket name.
inline std::string abstract_name(const char* what) {
  static int counter = 0;
  return "@skein-test-" + std::to_string(getpid()) + "-" + what + "-" + std::to_string(++counter);
}

inline bool ipv6_loopback_available() {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const skein::Address a = skein::Address::loopback(0, true);
  const bool ok = bind(fd, a.data(), a.size()) == 0;
  close(fd);
  return ok;
}

// Fills a listener's accept queue (it must never accept, and should have backlog 1): connects
// until an attempt times out, keeping the connections that got in. Empty if it never filled.
inline std::vector<skein::Stream> fill_backlog(const skein::Address& at, int max_attempts = 64) {
  std::vector<skein::Stream> kept;
  for (int i = 0; i < max_attempts; ++i) {
    try {
      kept.push_back(skein::connect(at, 200ms));
    } catch (const std::system_error& e) {
      if (e.code() == std::errc::timed_out) return kept;
      throw;
    }
  }
  kept.clear();
  return kept;
}

struct ChildResult {
  int status = 0;
  std::string err;  // what the child wrote to stderr
  bool exited_ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string how() const {
    if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
      return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) +
             ")";
    return "status " + std::to_string(status);
  }
};

// Runs `body` in a forked child (stderr captured in a file, an alarm after `limit`); its return
// value is the exit status, an escaping exception is printed and exits 99. `parent` runs in the
// parent meanwhile with the child's pid. The child must not use run_blocking or resolve: the
// blocking pool's threads do not survive fork. The parent kills the child if it outlives the
// limit by two seconds, so no test can hang here.
inline ChildResult run_in_child(const std::function<int()>& body, std::chrono::seconds limit = 20s,
                                const std::function<void(pid_t)>& parent = {}) {
  std::FILE* errfile = std::tmpfile();
  REQUIRE(errfile != nullptr);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(static_cast<unsigned>(limit.count()));
    dup2(fileno(errfile), STDERR_FILENO);
    int rc = 98;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: uncaught exception: %s\n", e.what());
      rc = 99;
    } catch (...) {
      std::fprintf(stderr, "child: uncaught non-std exception\n");
      rc = 99;
    }
    std::fflush(stderr);
    _exit(rc);
  }
  if (parent) {
    try {
      parent(pid);
    } catch (...) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      std::fclose(errfile);
      throw;
    }
  }
  ChildResult r;
  const auto give_up = std::chrono::steady_clock::now() + limit + 2s;
  for (;;) {
    const pid_t w = waitpid(pid, &r.status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (std::chrono::steady_clock::now() > give_up) {
      kill(pid, SIGKILL);
      waitpid(pid, &r.status, 0);
      r.err += "[parent: killed the child after its time limit]\n";
      break;
    }
    usleep(5'000);
  }
  std::rewind(errfile);
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, errfile)) > 0;) r.err.append(buf, n);
  std::fclose(errfile);
  return r;
}

// CPU time (user + system) this process has used so far, in milliseconds.
inline double cpu_ms() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto ms = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3;
  };
  return ms(u.ru_utime) + ms(u.ru_stime);
}

}  // namespace skein_test
