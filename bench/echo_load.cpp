// echo_load: the load generator of the echo benchmarks (scripts/bench-net). N connections each play
// request/response ping-pong with SIZE-byte messages of fresh random content, and every echoed
// byte is checked: a wrong byte or a stream that ends early is a hard error (exit 1), so a server
// cannot look fast by being wrong. Reports messages/s and round-trip latency percentiles.
//
//   echo_load --port P [--connections N] [--seconds S] [--size B] [--warmup S] [--json FILE]
//
// Each thread (one by default) drives its share of the connections from one level-triggered epoll
// set, so the client costs about what a good server costs and leaves the other core to the server.

#include "load_cli.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

namespace cli = skein_samples::cli;
using skein_bench::process_cpu_seconds;
using skein_bench::self_cpu_seconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: echo_load --port P [--host ADDR] [--connections N] [--seconds S] [--size B]\n"
    "                 [--warmup S] [--threads T] [--server-pid PID] [--json FILE]\n"
    "\n"
    "Load generator for TCP echo servers. Opens N connections (in batches, each proven with one\n"
    "round trip before the next batch, so the server's accept backlog never overflows), then every\n"
    "connection sends a B-byte message of random bytes, waits for all B bytes to come back,\n"
    "checks each one, and sends the next. Counts round trips completed during the measured\n"
    "S seconds, after S seconds of warm-up. A wrong byte, an early end of stream or a failed\n"
    "connection is an error: the run stops and exits 1.\n"
    "\n"
    "  --port P          the server's TCP port (required)\n"
    "  --host ADDR       the server's IPv4 address; default 127.0.0.1\n"
    "  --connections N   concurrent connections, 1..100000; default 100\n"
    "  --seconds S       measured time, 0.1..3600; default 10\n"
    "  --size B          message size in bytes, 1..1048576; default 64\n"
    "  --warmup S        unmeasured load before the measured time, 0..600; default 1\n"
    "  --threads T       client threads, each with its own epoll set, 1..64; default 1\n"
    "  --server-pid PID  also report the CPU time process PID (the server) used in the measured\n"
    "                    time, per message: a figure the client's own limits cannot cap\n"
    "  --json FILE       also write the results as JSON to FILE\n"
    "  -h, --help        show this help and exit\n"
    "\n"
    "Prints one progress line per second on stderr when the run lasts over 3 s.\n";

constexpr int kConnectBatch = 64;  // connects in flight at once: far below any accept backlog
constexpr int kConnectAttempts = 6;
constexpr auto kConnectStall = std::chrono::seconds(2);  // a dropped SYN: give up and retry
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);

struct Options : skein_bench::LoadOptions {
  Options() { seconds = 10; }
  int connections = 100;
  std::size_t size = 64;
  int threads = 1;
};

// ---- the run's shared state ----------------------------------------------------------------

enum Phase : int { kRamp, kWarmup, kMeasure, kStop };
std::atomic<int> phase{kRamp};
std::atomic<bool> failed{false};
std::mutex error_mutex;
std::string first_error;
std::atomic<std::uint64_t> error_count{0};

void fail(std::string message) {
  error_count.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(error_mutex);
  if (first_error.empty()) first_error = std::move(message);
  failed.store(true);
}

std::string errno_text(int err) {
  return std::strerror(err);
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

// ---- latency histogram ---------------------------------------------------------------------

// Log-linear buckets (the HdrHistogram layout): exact below 128 ns, then 64 buckets per power of
// two, so any recorded value is within 1.6% of its bucket. Fixed size, no allocation per sample.
class Histogram {
 public:
  static constexpr int kSub = 64;
  static constexpr std::size_t kBuckets = 2 * kSub + 57 * kSub;

  void add(std::uint64_t v) {
    ++counts_[index(v)];
    ++total_;
    max_ = std::max(max_, v);
    sum_ += v;
  }
  void merge(const Histogram& o) {
    for (std::size_t i = 0; i < kBuckets; ++i) counts_[i] += o.counts_[i];
    total_ += o.total_;
    max_ = std::max(max_, o.max_);
    sum_ += o.sum_;
  }
  std::uint64_t total() const { return total_; }
  std::uint64_t max() const { return max_; }
  double mean() const { return total_ ? static_cast<double>(sum_) / static_cast<double>(total_) : 0; }

  // The value at quantile q (0..1): the midpoint of the bucket holding it.
  double quantile(double q) const {
    if (total_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total_ - 1)) + 1;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return midpoint(i);
    }
    return static_cast<double>(max_);
  }

 private:
  static std::size_t index(std::uint64_t v) {
    if (v < 2 * kSub) return static_cast<std::size_t>(v);
    const int shift = std::bit_width(v) - 7;  // leaves v >> shift in [64, 128)
    return static_cast<std::size_t>(2 * kSub + (shift - 1) * kSub + static_cast<int>(v >> shift) - kSub);
  }
  static double midpoint(std::size_t i) {
    if (i < 2 * kSub) return static_cast<double>(i);
    const std::size_t shift = (i - 2 * kSub) / kSub + 1;
    const std::uint64_t top = (i - 2 * kSub) % kSub + kSub;
    return static_cast<double>(top << shift) + static_cast<double>(std::uint64_t{1} << shift) / 2;
  }

  std::uint64_t counts_[kBuckets] = {};
  std::uint64_t total_ = 0;
  std::uint64_t max_ = 0;
  std::uint64_t sum_ = 0;
};

// ---- one client thread ---------------------------------------------------------------------

struct Conn {
  enum State { kClosed, kConnecting, kIdle, kBusy };
  State state = kClosed;
  int fd = -1;
  int id = 0;
  int attempts = 0;
  Clock::time_point since;        // connect started, or retry due
  std::uint64_t rng = 0;          // xorshift64 state: cheap fresh content per message
  std::uint64_t sent_at = 0;      // ns, the current message's first send
  std::uint64_t messages = 0;     // completed round trips, all phases
  std::size_t sent = 0, got = 0;  // of the current message
  std::unique_ptr<unsigned char[]> tx, rx;
};

class Worker {
 public:
  Worker(const Options& opt, const sockaddr_in& addr, int first_id, int count)
      : opt_(opt), addr_(addr), conns_(static_cast<std::size_t>(count)) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
    for (int i = 0; i < count; ++i) {
      Conn& c = conns_[static_cast<std::size_t>(i)];
      c.id = first_id + i;
      c.rng = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(c.id + 1) ^ now_ns();
      c.tx = std::make_unique<unsigned char[]>(opt.size);
      c.rx = std::make_unique<unsigned char[]>(opt.size);
    }
  }
  ~Worker() {
    for (Conn& c : conns_)
      if (c.fd >= 0) close(c.fd);
    close(epfd_);
  }

  // The thread body: ramp up, report ready, wait for the warm-up, then ping-pong until told to
  // stop (or until any thread fails).
  void run() {
    for (std::size_t b = 0; b < conns_.size() && !failed.load(); b += kConnectBatch)
      ramp_batch(b, std::min(conns_.size(), b + kConnectBatch));
    ready_.store(true);
    while (phase.load(std::memory_order_relaxed) == kRamp && !failed.load(std::memory_order_relaxed))
      poll_events(20);
    for (Conn& c : conns_)
      if (c.state == Conn::kIdle) start_message(c);
    while (phase.load(std::memory_order_relaxed) != kStop && !failed.load(std::memory_order_relaxed))
      poll_events(20);
  }

  bool ready() const { return ready_.load(); }
  std::uint64_t messages() const { return total_.load(std::memory_order_relaxed); }
  std::uint64_t measured() const { return measured_; }
  std::uint64_t retries() const { return retries_; }
  const Histogram& histogram() const { return hist_; }

 private:
  // Connects conns_[b, e), then sends one message on each and waits for every echo: a connection
  // that has answered has certainly been accepted, so the next batch finds an empty backlog.
  void ramp_batch(std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) open_conn(conns_[i]);
    auto all = [&](Conn::State s) {
      for (std::size_t i = b; i < e; ++i)
        if (conns_[i].state != s) return false;
      return true;
    };
    while (!all(Conn::kIdle) && !failed.load()) {
      poll_events(10);
      const auto now = Clock::now();
      for (std::size_t i = b; i < e; ++i) {
        Conn& c = conns_[i];
        if (c.state == Conn::kConnecting && now - c.since > kConnectStall) retry(c, ETIMEDOUT);
        if (c.state == Conn::kClosed && now >= c.since) open_conn(c);
      }
    }
    const auto deadline = Clock::now() + kHandshakeTimeout;
    for (std::size_t i = b; i < e; ++i) start_message(conns_[i]);
    while (!all(Conn::kIdle) && !failed.load()) {
      if (Clock::now() > deadline) {
        for (std::size_t i = b; i < e; ++i)
          if (conns_[i].state != Conn::kIdle)
            return fail("connection " + std::to_string(conns_[i].id) + ": no echo within 10 s of connecting");
      }
      poll_events(10);
    }
  }

  void open_conn(Conn& c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return fail("socket: " + errno_text(errno) + " (raise ulimit -n?)");
    const int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.state = Conn::kConnecting;
    c.since = Clock::now();
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.ptr = &c;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) < 0) return fail("epoll_ctl: " + errno_text(errno));
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) == 0) return connected(c);
    if (errno != EINPROGRESS) retry(c, errno);
  }

  void connected(Conn& c) {
    c.state = Conn::kIdle;
    set_events(c, EPOLLIN);
  }

  // Refused, reset or stalled: the server may be busy accepting; try again a little later.
  void retry(Conn& c, int err) {
    close(c.fd);
    c.fd = -1;
    c.state = Conn::kClosed;
    ++retries_;
    if (++c.attempts >= kConnectAttempts)
      return fail("connection " + std::to_string(c.id) + ": connect failed " + std::to_string(c.attempts) +
                  " times, last: " + errno_text(err));
    c.since = Clock::now() + std::chrono::milliseconds(50 << c.attempts);
  }

  void set_events(Conn& c, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = &c;
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev) < 0) fail("epoll_ctl: " + errno_text(errno));
  }

  void poll_events(int timeout_ms) {
    epoll_event events[256];
    const int n = epoll_wait(epfd_, events, 256, timeout_ms);
    if (n < 0) {
      if (errno != EINTR) fail("epoll_wait: " + errno_text(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      Conn& c = *static_cast<Conn*>(events[i].data.ptr);
      if (c.state == Conn::kConnecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == 0) {
          connected(c);
        } else {
          retry(c, err);
        }
        continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) readable(c);
      if (c.state == Conn::kBusy && (events[i].events & EPOLLOUT)) write_rest(c);
    }
  }

  void start_message(Conn& c) {
    unsigned char* p = c.tx.get();
    std::size_t left = opt_.size;
    while (left > 0) {
      c.rng ^= c.rng << 13;
      c.rng ^= c.rng >> 7;
      c.rng ^= c.rng << 17;
      const std::size_t k = std::min<std::size_t>(left, 8);
      std::memcpy(p, &c.rng, k);
      p += k;
      left -= k;
    }
    c.state = Conn::kBusy;
    c.sent = c.got = 0;
    c.sent_at = now_ns();
    write_rest(c);
  }

  void write_rest(Conn& c) {
    const bool waiting = c.sent > 0;  // EPOLLOUT is on only after a short first write
    while (c.sent < opt_.size) {
      const ssize_t w = send(c.fd, c.tx.get() + c.sent, opt_.size - c.sent, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          if (!waiting) set_events(c, EPOLLIN | EPOLLOUT);
          return;
        }
        return fail("connection " + std::to_string(c.id) + ": send: " + errno_text(errno));
      }
      c.sent += static_cast<std::size_t>(w);
    }
    if (waiting) set_events(c, EPOLLIN);
  }

  void readable(Conn& c) {
    if (c.state != Conn::kBusy) {
      // Nothing is owed: any byte or EOF here is the server misbehaving.
      const ssize_t n = read(c.fd, c.rx.get(), opt_.size);
      if (n < 0 && errno == EAGAIN) return;
      return fail("connection " + std::to_string(c.id) + ": " +
                  (n > 0    ? "unexpected bytes between messages"
                   : n == 0 ? "server closed an idle connection"
                            : "read: " + errno_text(errno)));
    }
    const ssize_t n = read(c.fd, c.rx.get() + c.got, opt_.size - c.got);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      return fail("connection " + std::to_string(c.id) + ", message " + std::to_string(c.messages + 1) +
                  ": short stream: " + (n == 0 ? "end of stream" : errno_text(errno)) + " after " +
                  std::to_string(c.got) + " of " + std::to_string(opt_.size) + " bytes");
    }
    const auto k = static_cast<std::size_t>(n);
    if (c.got + k > c.sent || std::memcmp(c.rx.get() + c.got, c.tx.get() + c.got, k) != 0) {
      std::size_t at = c.got;
      while (at < c.got + k && at < c.sent && c.rx[at] == c.tx[at]) ++at;
      char detail[160];
      if (at >= c.sent)
        std::snprintf(detail, sizeof detail, "the server echoed byte %zu before it was sent", at);
      else
        std::snprintf(detail, sizeof detail, "byte %zu is 0x%02x, sent 0x%02x", at, c.rx[at], c.tx[at]);
      return fail("connection " + std::to_string(c.id) + ", message " + std::to_string(c.messages + 1) +
                  ": mismatch: " + detail);
    }
    c.got += k;
    if (c.got < opt_.size) return;
    ++c.messages;
    total_.store(total_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    const int ph = phase.load(std::memory_order_relaxed);
    if (ph == kMeasure) {
      hist_.add(now_ns() - c.sent_at);
      ++measured_;
    }
    if (ph == kWarmup || ph == kMeasure) {
      start_message(c);
    } else {
      c.state = Conn::kIdle;
    }
  }

  const Options& opt_;
  sockaddr_in addr_;
  int epfd_ = -1;
  std::vector<Conn> conns_;
  std::atomic<bool> ready_{false};
  std::atomic<std::uint64_t> total_{0};  // read by the main thread for progress lines
  std::uint64_t measured_ = 0;
  std::uint64_t retries_ = 0;
  Histogram hist_;
};

// ---- main thread ---------------------------------------------------------------------------

// Sleeps for `seconds`, printing a progress line each second when `progress`. False on failure.
bool run_for(double seconds, const char* label, bool progress,
             const std::vector<std::unique_ptr<Worker>>& workers) {
  auto total = [&] {
    std::uint64_t n = 0;
    for (const auto& w : workers) n += w->messages();
    return n;
  };
  const auto start = Clock::now();
  const auto end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto tick = start + std::chrono::seconds(1);
  std::uint64_t last = total();
  auto last_t = start;
  while (Clock::now() < end) {
    if (failed.load()) return false;
    std::this_thread::sleep_for(std::min<Clock::duration>(std::chrono::milliseconds(50), end - Clock::now()));
    const auto now = Clock::now();
    if (progress && now >= tick && now < end) {
      const std::uint64_t n = total();
      const double dt = std::chrono::duration<double>(now - last_t).count();
      std::fprintf(stderr, "echo_load: %-7s %4.0f s: %10.0f msg/s\n", label,
                   std::chrono::duration<double>(now - start).count(), static_cast<double>(n - last) / dt);
      last = n;
      last_t = now;
      tick += std::chrono::seconds(1);
    }
  }
  return !failed.load();
}

// RLIMIT_NOFILE's soft limit up to the hard one when the connections need it.
void raise_fd_limit(int connections) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  const rlim_t need = static_cast<rlim_t>(connections) + 64;
  if (rl.rlim_cur >= need) return;
  rl.rlim_cur = std::min(need, rl.rlim_max);
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need)
    cli::usage_error("--connections " + std::to_string(connections) + " needs " + std::to_string(need) +
                     " file descriptors; the hard limit (ulimit -Hn) is " + std::to_string(rl.rlim_max));
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "echo_load";
  Options opt;
  skein_bench::parse_load_args(argc, argv, kUsage, opt, [&](int& i, std::string_view& value) {
    if (cli::option("--connections", i, argc, argv, value)) {
      opt.connections = cli::number("--connections", value, 1, 100000);
    } else if (cli::option("--size", i, argc, argv, value)) {
      opt.size = cli::number<std::size_t>("--size", value, 1, 1 << 20);
    } else if (cli::option("--threads", i, argc, argv, value)) {
      opt.threads = cli::number("--threads", value, 1, 64);
    } else {
      return false;
    }
    return true;
  });
  opt.threads = std::min(opt.threads, opt.connections);
  raise_fd_limit(opt.connections);

  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  for (int t = 0, first = 0; t < opt.threads; ++t) {
    const int count = opt.connections / opt.threads + (t < opt.connections % opt.threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(opt, opt.addr, first, count));
    first += count;
  }
  const auto ramp_start = Clock::now();
  for (auto& w : workers) threads.emplace_back([&w] { w->run(); });

  const bool progress = opt.warmup + opt.seconds > 3;
  // Ramp: wait for every thread's connections to be up and answering.
  for (;;) {
    if (failed.load()) break;
    if (std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w->ready(); })) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double ramp_s = std::chrono::duration<double>(Clock::now() - ramp_start).count();
  if (progress && !failed.load())
    std::fprintf(stderr, "echo_load: %d connections up in %.2f s\n", opt.connections, ramp_s);

  double measured_s = 0, cpu_s = 0, server_cpu_s = -1;
  phase.store(kWarmup);
  if (!failed.load() && run_for(opt.warmup, "warm-up", progress, workers)) {
    const double cpu0 = self_cpu_seconds();
    const double server0 = opt.server_pid ? process_cpu_seconds(opt.server_pid) : -1;
    const auto t0 = Clock::now();
    phase.store(kMeasure);
    run_for(opt.seconds, "run", progress, workers);
    phase.store(kStop);
    measured_s = std::chrono::duration<double>(Clock::now() - t0).count();
    cpu_s = self_cpu_seconds() - cpu0;
    const double server1 = opt.server_pid ? process_cpu_seconds(opt.server_pid) : -1;
    if (server0 >= 0 && server1 >= 0) server_cpu_s = server1 - server0;
  }
  phase.store(kStop);
  for (auto& t : threads) t.join();

  Histogram hist;
  std::uint64_t messages = 0, retries = 0;
  for (const auto& w : workers) {
    hist.merge(w->histogram());
    messages += w->measured();
    retries += w->retries();
  }
  workers.clear();  // closes every connection before the report
  const std::uint64_t errors = error_count.load();
  const double rate = measured_s > 0 ? static_cast<double>(messages) / measured_s : 0;
  const double p50 = hist.quantile(0.50) / 1e3, p99 = hist.quantile(0.99) / 1e3;
  const double cpu_util = measured_s > 0 ? cpu_s / measured_s : 0;
  const double server_util = server_cpu_s >= 0 && measured_s > 0 ? server_cpu_s / measured_s : -1;
  const double server_us_per_msg =
      server_cpu_s >= 0 && messages ? server_cpu_s * 1e6 / static_cast<double>(messages) : -1;

  std::printf("echo_load: %d connections, %zu-byte messages, %.2f s measured after %.2f s warm-up\n",
              opt.connections, opt.size, measured_s, opt.warmup);
  std::printf("messages/s:     %.0f\n", rate);
  std::printf("total messages: %" PRIu64 "\n", messages);
  std::printf("errors:         %" PRIu64 "\n", errors);
  std::printf("latency:        p50 %.1f us, p99 %.1f us, max %.1f us\n", p50, p99,
              static_cast<double>(hist.max()) / 1e3);
  std::printf("client:         %.0f%% of a CPU, %" PRIu64 " connect retries, ramp %.2f s\n", cpu_util * 100,
              retries, ramp_s);
  if (server_util >= 0)
    std::printf("server:         %.0f%% of a CPU, %.2f us of CPU per message\n", server_util * 100,
                server_us_per_msg);
  if (errors) std::fprintf(stderr, "echo_load: error: %s\n", first_error.c_str());

  if (!opt.json.empty()) {
    std::FILE* f = skein_bench::open_json(opt.json);
    if (!f) return 1;
    std::string err_json;
    for (char ch : first_error) {
      if (ch == '"' || ch == '\\') err_json += '\\';
      err_json += (static_cast<unsigned char>(ch) < 0x20) ? ' ' : ch;
    }
    std::fprintf(f,
                 "{\"host\": \"%s\", \"port\": %d, \"connections\": %d, \"size\": %zu, \"threads\": %d,\n"
                 " \"warmup_s\": %.3f, \"measured_s\": %.4f, \"messages\": %" PRIu64
                 ", \"messages_per_s\": %.1f,\n"
                 " \"errors\": %" PRIu64 ", \"first_error\": \"%s\", \"connect_retries\": %" PRIu64
                 ", \"ramp_s\": %.3f,\n"
                 " \"latency_us\": {\"p50\": %.2f, \"p99\": %.2f, \"mean\": %.2f, \"max\": %.2f},\n"
                 " \"client_cpu\": %.3f, \"server_cpu\": %.3f, \"server_us_per_message\": %.3f}\n",
                 opt.host.c_str(), opt.port, opt.connections, opt.size, opt.threads, opt.warmup, measured_s,
                 messages, rate, errors, err_json.c_str(), retries, ramp_s, p50, p99, hist.mean() / 1e3,
                 static_cast<double>(hist.max()) / 1e3, cpu_util, server_util, server_us_per_msg);
    std::fclose(f);
  }
  return errors || messages == 0 ? 1 : 0;
}
