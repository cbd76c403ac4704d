// What an idle TLS connection costs a skein server, and what a bulk transfer costs it: the server
// runs in this process, the clients in a forked child, so the figures are the server's alone.
//
//   tls_memory --connections 2000              # heap and RSS per idle connection after a handshake
//   tls_memory --connections 2000 --plain      # the same over plain Streams (the fiber's and socket's share)
//   tls_memory --bulk-mib 512                  # one connection: the server receives 512 MiB
//   ... --release-buffers off                  # without SSL_MODE_RELEASE_BUFFERS on the server
//
// docs/tls.md ("Memory per connection") has the figures.
#include "cli.hpp"
#include "tls_pki.hpp"

#include <skein/skein.hpp>
#include <skein/tls.hpp>

#include <openssl/ssl.h>

#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;
namespace cli = skein_samples::cli;

namespace {

constexpr const char* kUsage =
    "usage: tls_memory [--connections N] [--bulk-mib M] [--release-buffers on|off] [--plain]\n"
    "  Runs a skein TLS server here and its clients in a forked child, then prints what the\n"
    "  server's process holds per connection.\n"
    "  --connections N        N connections (default 2000) that handshake, exchange a byte and stay\n"
    "                         idle, each server fiber parked in a read; prints the growth of malloc's\n"
    "                         heap (mallinfo2) and of the RSS divided by N\n"
    "  --bulk-mib M           instead: one connection over which the client sends M MiB (16 KiB\n"
    "                         writes) that the server reads (16 KiB reads); prints MiB/s and the\n"
    "                         server's CPU seconds\n"
    "  --release-buffers X    on or off: SSL_MODE_RELEASE_BUFFERS on the server's context (default:\n"
    "                         skein's setting)\n"
    "  --plain                plain Streams instead of TLS (the part that is not TLS's)\n";

struct Options {
  std::size_t connections = 2000;
  std::size_t bulk_mib = 0;
  int release_buffers = -1;  // -1: the context's default
  bool plain = false;
};

long rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * sysconf(_SC_PAGESIZE);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A TLS or plain stream, whichever the options ask for.
struct Conn {
  skein::Stream plain;
  skein::TlsStream tls;
  std::size_t read(std::span<char> b, skein::Deadline d) { return tls ? tls.read(b, d) : plain.read(b, d); }
  void write_all(std::string_view s, skein::Deadline d) { tls ? tls.write_all(s, d) : plain.write_all(s, d); }
};

// The child: the clients. Waits for the port on `from_parent`, then connects.
[[noreturn]] void run_clients(const Options& o, const std::string& ca, int from_parent) {
  std::uint16_t port = 0;
  if (read(from_parent, &port, sizeof port) != sizeof port) std::_Exit(1);
  skein::run([&] {
    skein::TlsContext ctx = skein::TlsContext::client();
    ctx.clear_trust().trust_ca(ca).set_session_cache(false);
    auto open = [&] {
      Conn c;
      if (o.plain)
        c.plain = skein::connect("127.0.0.1", port, 30s);
      else
        c.tls = skein::tls_connect("localhost", port, ctx, 30s);
      return c;
    };
    skein::TaskGroup group;
    if (o.bulk_mib > 0) {
      group.spawn([&] {
        Conn c = open();
        const std::string chunk(16 * 1024, 'b');
        for (std::size_t i = 0; i < o.bulk_mib * 64; ++i) c.write_all(chunk, 60s);
        char end[1];
        (void)c.read(std::span<char>(end, 1), 60s);  // the server's byte: all of it arrived
      });
    } else {
      for (std::size_t i = 0; i < o.connections; ++i) {
        group.spawn([&] {
          try {
            Conn c = open();
            c.write_all("x", 30s);
            char b[1];
            c.read(std::span<char>(b, 1), 30s);
            c.read(std::span<char>(b, 1), 600s);  // idle until the server goes
          } catch (const std::system_error&) {
          }
        });
      }
    }
    group.join();
  });
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "tls_memory";
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--connections", i, argc, argv, value)) {
      o.connections = cli::number<std::size_t>("--connections", value, 2, 100000);
    } else if (cli::option("--bulk-mib", i, argc, argv, value)) {
      o.bulk_mib = cli::number<std::size_t>("--bulk-mib", value, 1, 1 << 20);
    } else if (cli::option("--release-buffers", i, argc, argv, value)) {
      if (value != "on" && value != "off") cli::usage_error("--release-buffers takes on or off");
      o.release_buffers = value == "on" ? 1 : 0;
    } else if (std::string_view(argv[i]) == "--plain") {
      o.plain = true;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  if (o.connections + 64 > 1024) {
    rlimit r{};
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    if (r.rlim_cur < o.connections + 64) cli::usage_error("--connections exceeds the descriptor limit");
  }

  skein_test::TestCa ca;
  const skein_test::CertKey cert = ca.issue("localhost", "DNS:localhost,IP:127.0.0.1");
  int to_child[2];
  if (pipe(to_child) != 0) return 1;
  const pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    close(to_child[1]);
    run_clients(o, ca.pem(), to_child[0]);
  }
  close(to_child[0]);

  int status = 0;
  bool complete = true;
  skein::run([&] {
    skein::TlsContext ctx = skein::TlsContext::server();
    ctx.use_certificate_chain(cert.cert).use_private_key(cert.key);
    if (o.release_buffers == 1) SSL_CTX_set_mode(ctx.native_handle(), SSL_MODE_RELEASE_BUFFERS);
    if (o.release_buffers == 0) SSL_CTX_clear_mode(ctx.native_handle(), SSL_MODE_RELEASE_BUFFERS);
    const char* release =
        (SSL_CTX_get_mode(ctx.native_handle()) & SSL_MODE_RELEASE_BUFFERS) != 0 ? "on" : "off";
    skein::Listener l = skein::listen(skein::Address::loopback(0));
    const std::uint16_t port = l.local_address().port();
    if (write(to_child[1], &port, sizeof port) != sizeof port) std::exit(1);
    auto accept = [&] {
      Conn c;
      skein::Stream s = l.accept(30s);
      if (o.plain)
        c.plain = std::move(s);
      else
        c.tls = skein::TlsStream(std::move(s), ctx);
      return c;
    };

    if (o.bulk_mib > 0) {
      Conn c = accept();
      std::vector<char> buf(16 * 1024);
      const std::size_t total = o.bulk_mib << 20;
      std::size_t got = c.read(buf, 60s);  // the handshake, and the first bytes
      const auto start = skein::Clock::now();
      const double cpu0 = cpu_seconds();
      while (got < total) {
        const std::size_t n = c.read(buf, 60s);
        if (n == 0) break;
        got += n;
      }
      const double wall = std::chrono::duration<double>(skein::Clock::now() - start).count();
      const double cpu = cpu_seconds() - cpu0;
      complete = got == total;
      c.write_all("k", 10s);
      std::printf("%s, release buffers %s: received %zu MiB, %.0f MiB/s, server CPU %.3f s (%.2f ms/MiB)\n",
                  o.plain ? "plain" : "TLS", release, got >> 20, static_cast<double>(got >> 20) / wall, cpu,
                  cpu * 1e3 / static_cast<double>(got >> 20));
      return;
    }

    std::atomic<std::size_t> idle{0};
    std::vector<std::unique_ptr<Conn>> conns(o.connections);
    // One connection first: OpenSSL's one-time state (algorithm fetches, tables) is not counted.
    const auto warm = [&](std::size_t i) {
      conns[i] = std::make_unique<Conn>(accept());
      return skein::spawn([&, i] {
        try {
          char b[1];
          conns[i]->read(std::span<char>(b, 1), 30s);
          conns[i]->write_all("y", 30s);
          ++idle;
          conns[i]->read(std::span<char>(b, 1), 600s);
        } catch (const std::system_error&) {
        }
      });
    };
    std::vector<skein::Task<void>> tasks;
    tasks.push_back(warm(0));
    while (idle < 1) skein::sleep_for(1ms);
    skein::sleep_for(50ms);
    malloc_trim(0);
    const long rss0 = rss_bytes();
    const std::size_t heap0 = mallinfo2().uordblks, arena0 = mallinfo2().arena + mallinfo2().hblkhd;
    for (std::size_t i = 1; i < o.connections; ++i) tasks.push_back(warm(i));
    while (idle < o.connections) skein::sleep_for(5ms);
    skein::sleep_for(200ms);
    const long rss1 = rss_bytes();
    const std::size_t heap1 = mallinfo2().uordblks, arena1 = mallinfo2().arena + mallinfo2().hblkhd;
    const double n = static_cast<double>(o.connections - 1);
    std::printf(
        "%s, release buffers %s: %zu idle connections: heap %.0f bytes/connection in use (%.0f taken "
        "from the system), RSS %.0f bytes/connection\n",
        o.plain ? "plain" : "TLS", release, o.connections, static_cast<double>(heap1 - heap0) / n,
        static_cast<double>(arena1 - arena0) / n, static_cast<double>(rss1 - rss0) / n);
    kill(child, SIGKILL);
    for (auto& t : tasks) t.join();
  });
  close(to_child[1]);
  kill(child, SIGKILL);
  waitpid(child, &status, 0);
  if (!complete) {
    std::fputs("tls_memory: the transfer ended early\n", stderr);
    return 1;
  }
  return 0;
}
