// tls_load: the HTTPS load generator of scripts/bench-tls. N connections each connect, do a TLS
// handshake, send one HTTP/1.1 GET, read the whole response (status 200 and Content-Length bytes of
// body, or it is an error), send close_notify and close, then start over on a new connection. In
// --mode resume every connection offers the session (TLS 1.3: the ticket) its previous one got, and
// the tool counts how many handshakes the server really resumed. --mode keepalive keeps each
// connection and sends request after request (--pipeline K at a time).
//
//   tls_load --port P [--mode full|resume|keepalive] [--connections N] [--seconds S] [--warmup S]
//            [--pipeline K] [--server-pid PID] [--json FILE]
//
// One thread drives every connection from one edge-triggered epoll set over OpenSSL's socket BIO,
// so the client's cost is little more than its half of the cryptography. The certificate is not
// verified (the benchmark's servers use a throw-away one); the handshake's signature still is.

#include "load_cli.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

namespace cli = skein_samples::cli;
using skein_bench::die;
using skein_bench::process_cpu_seconds;
using skein_bench::self_cpu_seconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: tls_load --port P [--host ADDR] [--mode full|resume|keepalive] [--connections N]\n"
    "                [--seconds S] [--warmup S] [--pipeline K] [--server-name NAME] [--path PATH]\n"
    "                [--ciphersuites LIST] [--groups LIST] [--server-pid PID] [--json FILE]\n"
    "\n"
    "HTTPS load: TLS handshakes, or requests on kept connections. In --mode full and resume each\n"
    "of N concurrent connections connects, does a TLS 1.3 handshake, sends one GET, reads the\n"
    "whole response (status 200 with a Content-Length body), sends close_notify, closes, and\n"
    "starts over. full never offers a session: every handshake is a full one. resume offers the\n"
    "session the connection's previous handshake got (a TLS 1.3 ticket); the report says what\n"
    "fraction the server resumed. In --mode keepalive each connection handshakes once, then sends\n"
    "K requests in one write, reads the K responses, and again. Counts the connections (full,\n"
    "resume) or responses (keepalive) completed during the measured S seconds, after the warm-up.\n"
    "The server's certificate is not verified. A failed connection is counted and the run goes on;\n"
    "more than 1% of them failed, or none completed, exits 1.\n"
    "\n"
    "  --port P            the server's TCP port (required)\n"
    "  --host ADDR         the server's IPv4 address; default 127.0.0.1\n"
    "  --mode M            full, resume or keepalive; default full\n"
    "  --connections N     concurrent connections, 1..10000; default 32\n"
    "  --seconds S         measured time, 0.1..3600; default 5\n"
    "  --warmup S          unmeasured time first, 0..600; default 1\n"
    "  --pipeline K        keepalive: requests per write, 1..64; default 1\n"
    "  --server-name NAME  SNI and Host header; default localhost\n"
    "  --path PATH         the request's path; default /\n"
    "  --ciphersuites L    TLS 1.3 suites offered (OpenSSL syntax); default TLS_AES_128_GCM_SHA256\n"
    "  --groups L          key exchange groups offered; default X25519\n"
    "  --server-pid PID    also report that process's CPU time (from /proc) over the measured time\n"
    "  --json FILE         also write the results as JSON to FILE\n"
    "  -h, --help          show this help and exit\n";

struct Options : skein_bench::LoadOptions {
  bool resume = false;
  bool keepalive = false;  // --mode keepalive: one connection per slot, request after request
  int connections = 32;
  int pipeline = 1;
  std::string server_name = "localhost";
  std::string path = "/";
  std::string ciphersuites = "TLS_AES_128_GCM_SHA256";
  std::string groups = "X25519";
};

enum class State { connecting, handshaking, writing, reading };

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  State state = State::connecting;
  std::string in;
  int responses = 0;  // --mode keepalive: of the --pipeline requests last written
  Clock::time_point started;
  SSL_SESSION* session = nullptr;  // --mode resume: what the next handshake offers
};

struct Totals {
  std::uint64_t completed = 0, reused = 0, failed = 0;
  std::vector<std::uint32_t> latency_us;  // connect to end of response, measured ones only
};

std::string ssl_errors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

std::string json_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

class Load {
 public:
  Load(const Options& o, SSL_CTX* ctx) : o_(o), ctx_(ctx), conns_(static_cast<std::size_t>(o.connections)) {
    const std::string one =
        "GET " + o.path + " HTTP/1.1\r\nHost: " + o.server_name + "\r\nUser-Agent: tls_load\r\n\r\n";
    for (int k = 0; k < (o.keepalive ? o.pipeline : 1); ++k) request_ += one;
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
  }

  ~Load() {
    for (Conn& c : conns_) {
      if (c.ssl) release(c);
      SSL_SESSION_free(c.session);
    }
    close(ep_);
  }
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  int run() {
    const Clock::time_point begin = Clock::now();
    for (std::size_t i = 0; i < conns_.size(); ++i) start(i);
    const auto warm_end =
        begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.warmup));
    const auto end =
        warm_end + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.seconds));
    bool measuring = false;
    double server0 = 0, client0 = 0;
    std::vector<epoll_event> events(1024);
    for (;;) {
      const Clock::time_point now = Clock::now();
      if (!measuring && now >= warm_end) {
        measuring = true;
        measure_from_ = now;
        server0 = o_.server_pid > 0 ? process_cpu_seconds(o_.server_pid) : -1;
        client0 = self_cpu_seconds();
      }
      if (now >= end) break;
      if (failed_all_ > 1000 && ok_since_start_ == 0) break;  // nothing works: stop early
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>((measuring ? end : warm_end) - now);
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()),
                               static_cast<int>(std::clamp<long long>(left.count() + 1, 1, 1000)));
      if (n < 0 && errno != EINTR) die("epoll_wait");
      for (int k = 0; k < n; ++k)
        drive(events[static_cast<std::size_t>(k)].data.u32, events[static_cast<std::size_t>(k)].events);
    }
    const Clock::time_point stop = Clock::now();
    const double wall = std::chrono::duration<double>(stop - measure_from_).count();
    const double server_cpu =
        server0 >= 0 && o_.server_pid > 0 ? process_cpu_seconds(o_.server_pid) - server0 : -1;
    const double client_cpu = self_cpu_seconds() - client0;
    drain(events);
    return report(measuring ? wall : 0, server_cpu, client_cpu);
  }

 private:
  void start(std::size_t i) {
    Conn& c = conns_[i];
    c.in.clear();
    c.started = Clock::now();
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) die("socket");
    ++active_;
    const int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.ssl = SSL_new(ctx_);
    if (!c.ssl || SSL_set_fd(c.ssl, c.fd) != 1) {
      std::fprintf(stderr, "tls_load: SSL_new: %s\n", ssl_errors().c_str());
      std::exit(1);
    }
    SSL_set_connect_state(c.ssl);
    SSL_set_tlsext_host_name(c.ssl, o_.server_name.c_str());
    if (o_.resume && c.session) SSL_set_session(c.ssl, c.session);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) die("epoll_ctl");
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&o_.addr), sizeof o_.addr) == 0) {
      c.state = State::handshaking;
      drive(static_cast<std::uint32_t>(i), 0);
    } else if (errno == EINPROGRESS) {
      c.state = State::connecting;
    } else {
      fail(static_cast<std::uint32_t>(i), std::string("connect: ") + std::strerror(errno));
    }
  }

  // Advances connection i as far as it goes without blocking.
  void drive(std::uint32_t i, std::uint32_t events) {
    Conn& c = conns_[i];
    for (;;) {
      switch (c.state) {
        case State::connecting: {
          if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) return fail(i, std::string("connect: ") + std::strerror(err));
          c.state = State::handshaking;
          break;
        }
        case State::handshaking: {
          const int r = SSL_do_handshake(c.ssl);
          if (r == 1) {
            c.state = State::writing;
            break;
          }
          if (!would_block(c, r)) return fail(i, "handshake: " + describe(c, r));
          return;
        }
        case State::writing: {
          const int r = SSL_write(c.ssl, request_.data(), static_cast<int>(request_.size()));
          if (r > 0) {
            c.state = State::reading;
            break;
          }
          if (!would_block(c, r)) return fail(i, "write: " + describe(c, r));
          return;
        }
        case State::reading: {
          char buf[16 * 1024];
          const int r = SSL_read(c.ssl, buf, sizeof buf);
          if (r > 0) {
            c.in.append(buf, static_cast<std::size_t>(r));
            for (;;) {
              const long n = response_length(c.in);
              if (n < 0)
                return fail(i, "bad response: " + c.in.substr(0, std::min<std::size_t>(c.in.size(), 80)));
              if (n == 0) break;
              if (!o_.keepalive) return finish(i);
              c.in.erase(0, static_cast<std::size_t>(n));
              count(c, false);
              if (++c.responses == o_.pipeline) {
                c.responses = 0;
                if (draining_) return finish(i);
                c.started = Clock::now();
                c.state = State::writing;
                break;
              }
            }
            break;
          }
          if (!would_block(c, r)) return fail(i, "read: " + describe(c, r));
          return;
        }
      }
    }
  }

  const char* mode_name() const { return o_.keepalive ? "keepalive" : o_.resume ? "resume" : "full"; }

  static bool would_block(Conn& c, int r) {
    const int e = SSL_get_error(c.ssl, r);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
  }

  static std::string describe(Conn& c, int r) {
    const int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN) return "the server sent close_notify before the response";
    if (e == SSL_ERROR_SYSCALL) {
      const std::string q = ssl_errors();
      return errno != 0 ? std::string(std::strerror(errno))
                        : (q.empty() ? "the server closed the connection" : q);
    }
    const std::string q = ssl_errors();
    return q.empty() ? "SSL error " + std::to_string(e) : q;
  }

  // The length of the whole 200 response (with its Content-Length body) that `in` starts with; 0 if
  // it is not all there yet, -1 for anything else.
  static long response_length(const std::string& in) {
    const std::size_t head_end = in.find("\r\n\r\n");
    if (head_end == std::string::npos) return in.size() > 64 * 1024 ? -1 : 0;
    if (in.compare(0, 13, "HTTP/1.1 200 ") != 0 && in.compare(0, 13, "HTTP/1.0 200 ") != 0) return -1;
    std::size_t length = 0;
    bool have_length = false;
    for (std::size_t pos = in.find("\r\n") + 2; pos < head_end;) {
      const std::size_t eol = in.find("\r\n", pos);
      const std::string_view line(in.data() + pos, eol - pos);
      constexpr std::string_view key = "content-length:";
      if (line.size() > key.size() &&
          std::equal(key.begin(), key.end(), line.begin(), [](char a, char b) { return a == (b | 0x20); })) {
        length = std::strtoul(std::string(line.substr(key.size())).c_str(), nullptr, 10);
        have_length = true;
      }
      pos = eol + 2;
    }
    if (!have_length) return -1;
    const std::size_t have = in.size() - head_end - 4;
    return have >= length ? static_cast<long>(head_end + 4 + length) : 0;
  }

  void finish(std::uint32_t i) {
    Conn& c = conns_[i];
    count(c, SSL_session_reused(c.ssl) == 1);
    if (o_.resume) {
      if (SSL_SESSION* s = SSL_get1_session(c.ssl)) {
        if (SSL_SESSION_is_resumable(s)) {
          SSL_SESSION_free(c.session);
          c.session = s;
        } else {
          SSL_SESSION_free(s);
        }
      }
    }
    SSL_shutdown(c.ssl);  // sends close_notify; the server's own is not waited for
    release(c);
    if (!draining_) start(i);
  }

  // A response completed on c: counted if it ended in the measured time.
  void count(const Conn& c, bool reused) {
    ++ok_since_start_;
    if (first_.empty()) {
      const int group = static_cast<int>(SSL_get_negotiated_group(c.ssl));
      first_version_ = SSL_get_version(c.ssl);
      first_cipher_ = SSL_get_cipher_name(c.ssl);
      first_group_ = group > 0 ? OBJ_nid2sn(group & ~TLSEXT_nid_unknown) : "?";
      first_ = "ok";
    }
    const Clock::time_point now = Clock::now();
    if (measure_from_ == Clock::time_point{} || now < measure_from_ || draining_) return;
    ++totals_.completed;
    if (reused) ++totals_.reused;
    totals_.latency_us.push_back(static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now - c.started).count()));
  }

  void fail(std::uint32_t i, const std::string& why) {
    Conn& c = conns_[i];
    ERR_clear_error();
    if (measure_from_ != Clock::time_point{} && !draining_) ++totals_.failed;
    ++failed_all_;
    if (first_error_.empty()) first_error_ = why;
    if (o_.resume) {  // a session the server refused is not offered again
      SSL_SESSION_free(c.session);
      c.session = nullptr;
    }
    release(c);
    if (!draining_) start(i);
  }

  // After the measured time: no new connections, and up to 2 s for those under way to finish as
  // a client would (close_notify after the response), so that the servers see no handshake cut
  // short by the end of the run.
  void drain(std::vector<epoll_event>& events) {
    draining_ = true;
    const Clock::time_point until = Clock::now() + std::chrono::seconds(2);
    while (active_ > 0 && Clock::now() < until) {
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 100);
      if (n < 0 && errno != EINTR) die("epoll_wait");
      for (int k = 0; k < n; ++k)
        drive(events[static_cast<std::size_t>(k)].data.u32, events[static_cast<std::size_t>(k)].events);
    }
  }

  void release(Conn& c) {
    SSL_free(c.ssl);
    c.ssl = nullptr;
    close(c.fd);  // also removes it from the epoll set
    c.fd = -1;
    --active_;
  }

  int report(double wall, double server_cpu, double client_cpu) {
    std::vector<std::uint32_t>& lat = totals_.latency_us;
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double q) -> double {
      return lat.empty() ? 0
                         : lat[std::min(lat.size() - 1,
                                        static_cast<std::size_t>(q * static_cast<double>(lat.size())))];
    };
    const double per_s = wall > 0 ? static_cast<double>(totals_.completed) / wall : 0;
    const double reused_fraction =
        totals_.completed ? static_cast<double>(totals_.reused) / static_cast<double>(totals_.completed) : 0;
    const double server_us =
        server_cpu >= 0 && totals_.completed ? server_cpu * 1e6 / static_cast<double>(totals_.completed) : -1;
    std::printf(
        "%s: %llu %s in %.2f s = %.0f/s, %.1f%% resumed, %llu failed (%s %s %s); latency p50 %.0f us, "
        "p99 %.0f us; client CPU %.2f",
        mode_name(), static_cast<unsigned long long>(totals_.completed),
        o_.keepalive ? "responses" : "connections", wall, per_s, reused_fraction * 100,
        static_cast<unsigned long long>(totals_.failed), first_version_.c_str(), first_cipher_.c_str(),
        first_group_.c_str(), pct(0.5), pct(0.99), wall > 0 ? client_cpu / wall : 0);
    if (server_cpu >= 0)
      std::printf(", server CPU %.2f, %.1f us per connection", server_cpu / wall, server_us);
    std::printf("\n");
    if (!first_error_.empty()) std::fprintf(stderr, "tls_load: first failure: %s\n", first_error_.c_str());
    if (!o_.json.empty()) {
      std::FILE* f = skein_bench::open_json(o_.json);
      if (!f) return 1;
      std::fprintf(
          f,
          "{\"mode\": \"%s\", \"connections\": %d, \"seconds\": %.3f, \"completed\": %llu, "
          "\"pipeline\": %d, \"per_s\": %.1f, \"reused\": %llu, \"reused_fraction\": %.4f, \"failed\": %llu, "
          "\"failed_including_warmup\": %llu, \"first_error\": \"%s\", \"version\": \"%s\", "
          "\"cipher\": \"%s\", \"group\": \"%s\", \"latency_p50_us\": %.0f, \"latency_p99_us\": %.0f, "
          "\"client_cpu_s\": %.3f, \"server_cpu_s\": %.3f, \"server_us_per_connection\": %.2f}\n",
          mode_name(), o_.connections, wall, static_cast<unsigned long long>(totals_.completed), o_.pipeline,
          per_s, static_cast<unsigned long long>(totals_.reused), reused_fraction,
          static_cast<unsigned long long>(totals_.failed), static_cast<unsigned long long>(failed_all_),
          json_escape(first_error_).c_str(), first_version_.c_str(), first_cipher_.c_str(),
          first_group_.c_str(), pct(0.5), pct(0.99), client_cpu, server_cpu, server_us);
      std::fclose(f);
    }
    if (totals_.completed == 0 || totals_.failed * 100 > totals_.completed) return 1;
    return 0;
  }

  const Options& o_;
  SSL_CTX* ctx_;
  std::vector<Conn> conns_;
  std::string request_;
  int ep_ = -1;
  Totals totals_;
  std::uint64_t ok_since_start_ = 0, failed_all_ = 0;
  int active_ = 0;  // connections open
  bool draining_ = false;
  Clock::time_point measure_from_{};
  std::string first_, first_version_ = "?", first_cipher_ = "?", first_group_ = "?", first_error_;
};

}  // namespace

int main(int argc, char** argv) {
  cli::program = "tls_load";
  Options o;
  skein_bench::parse_load_args(argc, argv, kUsage, o, [&](int& i, std::string_view& value) {
    if (cli::option("--mode", i, argc, argv, value)) {
      if (value != "full" && value != "resume" && value != "keepalive")
        cli::usage_error("--mode takes full, resume or keepalive");
      o.resume = value == "resume";
      o.keepalive = value == "keepalive";
    } else if (cli::option("--connections", i, argc, argv, value)) {
      o.connections = cli::number("--connections", value, 1, 10000);
    } else if (cli::option("--server-name", i, argc, argv, value)) {
      o.server_name = value;
    } else if (cli::option("--path", i, argc, argv, value)) {
      if (!value.starts_with("/")) cli::usage_error("--path must start with /");
      o.path = value;
    } else if (cli::option("--ciphersuites", i, argc, argv, value)) {
      o.ciphersuites = value;
    } else if (cli::option("--pipeline", i, argc, argv, value)) {
      o.pipeline = cli::number("--pipeline", value, 1, 64);
    } else if (cli::option("--groups", i, argc, argv, value)) {
      o.groups = value;
    } else {
      return false;
    }
    return true;
  });

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, o.ciphersuites.c_str()) != 1 ||
      SSL_CTX_set1_groups_list(ctx, o.groups.c_str()) != 1) {
    std::fprintf(stderr, "tls_load: bad TLS settings (--ciphersuites, --groups): %s\n", ssl_errors().c_str());
    return 2;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  // Sessions live in the connections (SSL_get1_session), not in OpenSSL's cache.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  int status;
  {
    Load load(o, ctx);
    status = load.run();
  }
  SSL_CTX_free(ctx);
  return status;
}
