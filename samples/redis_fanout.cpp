// redis_fanout: N fibers, each with its own blocking hiredis connection, run BLPOP on a key of
// their own at the same time. hiredis is Debian's, its synchronous API, unmodified: it calls
// connect, poll, read and write as blocking code does, and the libc hooks (libskein_hooks, linked
// into this program) make each of those park only the calling fiber. N waits of S seconds then
// take about S seconds in all, on one thread; with --serial the hooks are bypassed and they take
// N*S, as they would without skein.

#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <hiredis/hiredis.h>

#include "cli.hpp"
#include "io_check.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: redis_fanout [--host H] [--port P] [--fibers N] [--seconds S] [--serial]\n"
    "\n"
    "Starts N fibers; each opens its own blocking hiredis connection to the Redis server at H:P\n"
    "and runs 'BLPOP redis_fanout:<i> S' (a key nobody pushes to, so each waits S seconds). The\n"
    "libc hooks park only the waiting fiber, so the batch takes about S seconds, not N*S. Prints\n"
    "the hooked calls, then the batch time and what the waits would take one after the other.\n"
    "\n"
    "  --host H      the Redis server's address; default 127.0.0.1\n"
    "  --port P      its port, 1..65535; default 6379\n"
    "  --fibers N    how many fibers (and connections), 1..10000; default 100\n"
    "  --seconds S   each BLPOP's timeout, 0.01..60 (Redis takes fractions); default 1\n"
    "  --serial      bypass the hooks (skein::hooks::Bypass): the calls block the thread\n"
    "  -h, --help    show this help and exit\n"
    "\n"
    "Exits 1 if a connection or a reply fails (the first error is printed), 2 on a bad argument.\n";

struct Config {
  std::string host = "127.0.0.1";
  int port = 6379;
  int fibers = 100;
  double seconds = 1;
  bool serial = false;
};

// One fiber's work: connect, BLPOP, expect the timeout's nil reply. "" or the error.
std::string blpop(const Config& config, int i) {
  std::unique_ptr<redisContext, void (*)(redisContext*)> c(redisConnect(config.host.c_str(), config.port),
                                                           &redisFree);
  if (!c) return "cannot allocate a hiredis context";
  if (c->err)
    return "cannot connect to " + config.host + ":" + std::to_string(config.port) + ": " + c->errstr;
  char timeout[32];
  std::snprintf(timeout, sizeof timeout, "%.3f", config.seconds);
  auto* reply = static_cast<redisReply*>(redisCommand(c.get(), "BLPOP redis_fanout:%d %s", i, timeout));
  if (!reply) return std::string("BLPOP failed: ") + c->errstr;
  std::string err;
  if (reply->type == REDIS_REPLY_ERROR)
    err = std::string("BLPOP: ") + reply->str + " (Redis older than 6 takes whole seconds only)";
  else if (reply->type != REDIS_REPLY_NIL)
    err = "BLPOP redis_fanout:" + std::to_string(i) + " returned a value: someone pushed to it";
  freeReplyObject(reply);
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "redis_fanout";
  Config config;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--host", i, argc, argv, value)) {
      config.host = value;
    } else if (cli::option("--port", i, argc, argv, value)) {
      config.port = cli::number("--port", value, 1, 65535);
    } else if (cli::option("--fibers", i, argc, argv, value)) {
      config.fibers = cli::number("--fibers", value, 1, 10000);
    } else if (cli::option("--seconds", i, argc, argv, value)) {
      config.seconds = cli::number("--seconds", value, 0.01, 60.0);
    } else if (std::string_view(argv[i]) == "--serial") {
      config.serial = true;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  std::printf("%s\n", skein::hooks::describe().c_str());
  std::fflush(stdout);

  cli::check_io_backend();
  std::string first_error;
  const auto start = skein::Clock::now();
  skein::run([&] {
    std::vector<skein::Task<std::string>> tasks;
    for (int i = 0; i < config.fibers; ++i)
      tasks.push_back(skein::spawn([&config, i] {
        if (config.serial) {
          skein::hooks::Bypass bypass;  // this fiber's calls block the thread
          return blpop(config, i);
        }
        return blpop(config, i);
      }));
    for (auto& t : tasks) {
      std::string err = t.join();
      if (first_error.empty()) first_error = std::move(err);
    }
  });
  const double took = std::chrono::duration<double>(skein::Clock::now() - start).count();
  if (!first_error.empty()) {
    std::fprintf(stderr, "redis_fanout: %s\n", first_error.c_str());
    return 1;
  }
  std::printf("%d fibers, one connection each, BLPOP %.3f s: %.3f s in all%s (one after the other: %.3f s)\n",
              config.fibers, config.seconds, took, config.serial ? ", hooks bypassed" : "",
              config.fibers * config.seconds);
  return 0;
}
