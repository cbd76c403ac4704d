// For the hooks' client tests: servers they start as child processes and always stop by pid, on a
// free loopback port, with every wait bounded. Called outside fibers (before and after skein::run).
#pragma once

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <skein/skein.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <regex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace hooks_test {

// The full path of `name` on PATH, or "" if it is not installed.
inline std::string find_program(const char* name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  for (const char* extra : {":/usr/sbin", ":/sbin", ":/usr/local/bin"}) dirs += extra;
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// A port nothing listens on right now (the kernel's pick for port 0).
inline int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("free_port");
    std::exit(1);
  }
  ::close(s);
  return ntohs(a.sin_port);
}

// True once something accepts TCP connections on 127.0.0.1:port, within `limit`.
inline bool wait_listening(int port, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    if (ok) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// This process's TCP socket connected to 127.0.0.1:port (a client library's, which it does not
// show), or -1.
inline int connection_to(int port) {
  for (int fd = 3; fd < 1024; ++fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 && a.sin_family == AF_INET &&
        ntohs(a.sin_port) == port && a.sin_addr.s_addr == htonl(INADDR_LOOPBACK))
      return fd;
  }
  return -1;
}

// A child process, stopped by its pid (SIGTERM, then SIGKILL after 5 s) when this goes away. It
// also gets SIGKILL if the test process dies first (PR_SET_PDEATHSIG), so none outlives a test
// killed by its timeout.
class Child {
 public:
  // Starts argv[0] with `argv`; with `capture`, its stdout is readable through line(). With `uid`
  // (root only), it runs as that user and group (servers that refuse to run as root).
  explicit Child(const std::vector<std::string>& argv, bool capture = false,
                 uid_t uid = static_cast<uid_t>(-1), gid_t gid = static_cast<gid_t>(-1)) {
    int out[2] = {-1, -1};
    if (capture && pipe(out) != 0) {
      std::perror("pipe");
      std::exit(1);
    }
    pid_ = fork();
    if (pid_ < 0) {
      std::perror("fork");
      std::exit(1);
    }
    if (pid_ == 0) {
      if (uid != static_cast<uid_t>(-1) &&
          (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) {
        std::perror("setuid");
        _exit(127);
      }
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // after setuid, which clears it
      if (capture) {
        dup2(out[1], 1);
        ::close(out[0]);
        ::close(out[1]);
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
      _exit(127);
    }
    if (capture) {
      ::close(out[1]);
      out_ = out[0];
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    stop();
    if (out_ >= 0) ::close(out_);
  }

  // The next line of its stdout (without the newline), or nullopt at EOF or after `limit`.
  std::optional<std::string> line(std::chrono::milliseconds limit) {
    std::string s;
    const auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now())
              .count();
      pollfd p{out_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return std::nullopt;
      char c;
      if (::read(out_, &c, 1) != 1) return std::nullopt;
      if (c == '\n') return s;
      s += c;
    }
  }

  // Stops it (SIGTERM, SIGKILL after 5 s) and returns its wait status; -1 if already reaped.
  int stop() {
    if (pid_ <= 0) return status_;
    kill(pid_, SIGTERM);
    return reap(std::chrono::seconds(5));
  }

  // Waits up to `limit` for it to exit by itself (then kills it). Returns the wait status.
  int reap(std::chrono::milliseconds limit) {
    if (pid_ <= 0) return status_;
    const auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const pid_t r = waitpid(pid_, &status_, WNOHANG);
      if (r == pid_) break;
      if (std::chrono::steady_clock::now() >= until) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return status_;
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int status_ = -1;
};

// How a test interrupts a hooked call: its fiber cancelled, with_timeout's deadline, a
// TimeoutScope's.
enum class Way { cancel, with_timeout, timeout_scope };

// Runs `call` in a fiber, interrupted `way` after 50 ms; what it stored in `out` stays there.
template <class F>
void interrupt_after_50ms(Way way, F&& call) {
  using namespace std::chrono_literals;
  switch (way) {
    case Way::cancel: {
      auto t = skein::spawn([&] { call(); });
      skein::sleep_for(50ms);
      t.cancel();
      try {
        t.join();
      } catch (const std::system_error&) {
      }
      break;
    }
    case Way::with_timeout:
      try {
        skein::with_timeout(50ms, [&] { call(); });
      } catch (const std::system_error&) {
      }
      break;
    case Way::timeout_scope: {
      skein::TimeoutScope scope(50ms);
      call();
      break;
    }
  }
}

}  // namespace hooks_test
