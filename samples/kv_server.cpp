// kv_server: a Redis-compatible key-value server (RESP2), one fiber per connection. redis-cli and
// redis-benchmark talk to it as to redis-server:
//
//   $ kv_server --port 6380 &
//   $ redis-cli -p 6380 set greeting hello
//   OK
//   $ redis-cli -p 6380 get greeting
//   "hello"
//
// Each connection's fiber is a plain blocking loop: read what the client sent into a buffer, let a
// KvSession (the protocol and the commands, samples/kv/) run every complete command in it, and
// write all the replies back with one write. Pipelined commands therefore cost one read and one
// write per batch, not per command. The keys live in one Store shared by every connection, on
// every worker thread: 64 shards, each a hash map behind its own mutex, held only for the map
// operation and never across a fiber wait (see samples/kv/store.hpp and docs/kv_server.md).
// Besides the connections, a fiber sweeps expired keys every 100 ms, and each worker keeps polling
// for --poll-us after its last work before it sleeps (RuntimeOptions::spin_before_sleep).

#include <skein/skein.hpp>

#include "cli.hpp"
#include "io_check.hpp"
#include "kv/kv_session.hpp"
#include "kv/store.hpp"
#include "serve_main.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

namespace cli = skein_samples::cli;
using skein_samples::kv::KvSession;
using skein_samples::kv::Store;

constexpr const char* kUsage =
    "usage: kv_server [--host H] [--port P] [--threads N] [--poll-us N] [--debug-dump[=SIG]]\n"
    "\n"
    "A Redis-compatible key-value server (RESP2, as redis-cli and redis-benchmark speak it), one\n"
    "fiber per connection: PING ECHO SET (NX XX GET EX PX KEEPTTL) GET DEL EXISTS INCR DECR INCRBY\n"
    "DECRBY MGET MSET EXPIRE PEXPIRE PERSIST TTL PTTL DBSIZE FLUSHALL FLUSHDB SELECT QUIT, pipelining,\n"
    "inline commands. Keys live in memory only. Prints 'listening on HOST:PORT' once it accepts\n"
    "connections. Ctrl-C or SIGTERM stops it: it stops accepting, gives open connections a second to\n"
    "finish, and exits 0.\n"
    "\n"
    "  --host H      address to listen on, an IP literal or a name; default 127.0.0.1\n"
    "  --port P      TCP port, 0..65535 (0 picks a free one); default 6380 (Redis's 6379 plus one,\n"
    "                so it can run beside a redis-server)\n"
    "  --threads N   worker threads serving connections, 1..256; default 1\n"
    "  --poll-us N   after the last request, a worker keeps polling for new ones for N microseconds\n"
    "                before it sleeps (a sleeping server costs each client send a wake-up);\n"
    "                0..100000, 0 never polls; default 50\n"
    "  --debug-dump[=SIG]  print every fiber (what it waits for, since when, where it was\n"
    "                      spawned) to stderr on signal SIG, SIGUSR1 (the default), SIGUSR2\n"
    "                      or SIGQUIT, and go on serving: try kill -USR1 PID\n"
    "  -h, --help    show this help and exit\n";

constexpr std::size_t kReadChunk = 16 * 1024;           // the read buffer, until a command needs more
constexpr std::size_t kMaxQueryBuffer = 1024ull << 20;  // Redis's client-query-buffer-limit, 1 GiB
constexpr std::chrono::milliseconds kSweepInterval{100};

// A connection's read buffer: [begin, end) holds bytes read and not yet consumed.
struct ReadBuffer {
  std::unique_ptr<char[]> data = std::make_unique_for_overwrite<char[]>(kReadChunk);
  std::size_t capacity = kReadChunk;
  std::size_t begin = 0;
  std::size_t end = 0;

  std::string_view pending() const { return {data.get() + begin, end - begin}; }

  // Makes room for the next read: moves the pending bytes to the front when little room is left
  // or the pending command needs more than the space after its start (`wanted` bytes, which the
  // parser knows while a command is incomplete), and doubles the buffer when that is not enough.
  // One doubling per read: memory follows the bytes that arrive, never a length a client merely
  // claims.
  // Returns false if that would pass kMaxQueryBuffer.
  bool make_room(std::size_t wanted) {
    if (begin == end) begin = end = 0;
    if (begin > 0 && (capacity - end < capacity / 4 || wanted > capacity - begin)) {
      std::memmove(data.get(), data.get() + begin, end - begin);
      end -= begin;
      begin = 0;
    }
    if (end < capacity && wanted <= capacity - begin) return true;
    const std::size_t size = capacity * 2;
    if (size > kMaxQueryBuffer) return false;
    auto bigger = std::make_unique_for_overwrite<char[]>(size);
    std::memcpy(bigger.get(), data.get(), end);
    data = std::move(bigger);
    capacity = size;
    return true;
  }

  // Gives back the memory of a buffer a large command grew, once it is empty.
  void shrink_if_empty() {
    if (begin != end || capacity <= 4 * kReadChunk) return;
    begin = end = 0;
    data = std::make_unique_for_overwrite<char[]>(kReadChunk);
    capacity = kReadChunk;
  }
};

// Closes gracefully after the last reply: stop writing, then read and drop what the client still
// sends for a moment. Closing with unread bytes in the socket makes the kernel send a reset, which
// can destroy the reply (say, a protocol error) in the client's receive queue before it reads it.
void linger_close(skein::Stream& stream) {
  try {
    stream.shutdown(skein::Shutdown::write);
    char drain[4096];
    const skein::Deadline until(std::chrono::seconds(2));
    std::size_t drained = 0;
    while (drained < 1024 * 1024) {
      const std::size_t n = stream.read(drain, until);
      if (n == 0) break;
      drained += n;
    }
  } catch (const std::system_error&) {
    // A timeout, a reset or a cancel: the connection ends here either way.
  }
}

void handle_connection(skein::Stream stream, Store& store) {
  KvSession session(store);
  ReadBuffer in;
  for (;;) {
    if (!in.make_room(in.begin < in.end ? session.wanted() : 0)) {
      stream.write_all("-ERR Protocol error: query buffer limit (1 GiB) exceeded\r\n");
      linger_close(stream);
      return;
    }
    const std::size_t n = stream.read({in.data.get() + in.end, in.capacity - in.end});
    if (n == 0) return;  // the client closed
    in.end += n;
    // Every complete command that arrived, all replies in one write (more than one only when
    // they pass KvSession::kOutputBatch).
    for (;;) {
      in.begin += session.feed(in.pending());
      const bool batch_full = session.output().size() >= KvSession::kOutputBatch;
      if (!session.output().empty()) {
        // Write at the end of the scheduler's round, once every connection that became readable
        // with this one has run its commands, as Redis writes its replies just before it sleeps:
        // a client with many connections then gets its replies in bursts and wakes less often.
        // (redis-benchmark -c 50, unpipelined: 3-5% more requests per second; no change in the
        // latency of a lone client.)
        skein::yield();
        stream.write_all(session.output());
        session.release_output(4 * kReadChunk);
      }
      if (session.should_close()) {
        linger_close(stream);
        return;
      }
      if (!batch_full || in.begin == in.end) break;
    }
    in.shrink_if_empty();
  }
}

// The background fibers (the expiry sweeper), cancelled and joined however main's fiber
// leaves its scope (a failed listen included): the runtime waits for every fiber, and these would
// otherwise run forever.
struct Background {
  std::vector<skein::Task<void>> tasks;
  ~Background() {
    for (auto& task : tasks) task.cancel();
    for (auto& task : tasks) {
      try {
        task.join();
      } catch (const std::system_error&) {
        // operation_canceled: how they end.
      }
    }
  }
};

void serve(const std::string& host, std::uint16_t port, Store& store) {
  Background background;
  // Active expiry: every 100 ms a bounded sweep reclaims expired keys nobody reads again.
  background.tasks.push_back(skein::spawn(skein::FiberOptions{"expiry sweeper"}, [&store] {
    for (;;) {
      skein::sleep_for(kSweepInterval);
      store.sweep();
    }
  }));
  skein_samples::listen_and_serve(
      host, port, [&store](skein::Stream stream) { handle_connection(std::move(stream), store); });
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "kv_server";
  skein_samples::ServerFlags flags(6380);
  std::chrono::microseconds poll{50};
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (flags.parse(i, argc, argv)) {
      // --host, --port, --threads
    } else if (cli::option("--poll-us", i, argc, argv, value)) {
      poll = std::chrono::microseconds(cli::number("--poll-us", value, 0, 100000));
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  cli::check_io_backend();
  auto store = std::make_unique<Store>();
  try {
    // --poll-us: each worker polls for that long after its last work before it sleeps (see
    // docs/kv_server.md, "Waking up").
    skein::RuntimeOptions runtime = flags.runtime_options();
    runtime.spin_before_sleep = poll;
    skein::run(runtime, [&] { serve(flags.host, flags.port, *store); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kv_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
