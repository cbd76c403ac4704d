// hiredis (Debian's libhiredis, its synchronous API, unmodified) from fibers, against a real
// redis-server this program starts on a free loopback port and stops by its pid. Exits 77 (a skip,
// for meson) only when redis-server is not installed.
//
// HOOKS_REDIS_FANOUT, when set, is samples/redis_fanout, which is run against the same server.
#define DOCTEST_CONFIG_IMPLEMENT
#include "hooks_test_util.hpp"

#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

int redis_port = 0;

double seconds_since(skein::TimePoint start) {
  return std::chrono::duration<double>(skein::Clock::now() - start).count();
}

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;

Context connect_redis() {
  Context c(redisConnect("127.0.0.1", redis_port));
  if (!c || c->err) return nullptr;
  return c;
}

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

Reply command(redisContext* c, const char* format, auto... args) {
  return Reply(static_cast<redisReply*>(redisCommand(c, format, args...)));
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE("hiredis: 200 fibers each BLPOP <own key> 1 on their own connection take about 1 s, not 200") {
    constexpr int fibers = 200;
    double took = 0;
    skein::run([&] {
      const auto start = skein::Clock::now();
      std::vector<skein::Task<std::string>> tasks;
      for (int i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn([i]() -> std::string {
          Context c = connect_redis();
          if (!c) return "connect failed";
          Reply r = command(c.get(), "BLPOP blpop:%d 1", i);
          if (!r) return std::string("I/O error: ") + c->errstr;
          if (r->type != REDIS_REPLY_NIL) return "expected nil, got type " + std::to_string(r->type);
          return "";
        }));
      for (auto& t : tasks) CHECK(t.join() == "");
      took = seconds_since(start);
    });
    MESSAGE("200 x BLPOP 1 s in fibers: " << took << " s (serially: 200 s)");
    CHECK(took >= 0.95);
    CHECK(took < 4.0);
  }

  TEST_CASE("hiredis: 200 fibers x 1,000 SET/GET on their own connections, every reply checked") {
    constexpr int fibers = 200;
    constexpr int rounds = 1000;
    double took = 0;
    skein::run([&] {
      const auto start = skein::Clock::now();
      std::vector<skein::Task<std::string>> tasks;
      for (int i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn([i]() -> std::string {
          Context c = connect_redis();
          if (!c) return "connect failed";
          for (int j = 0; j < rounds; ++j) {
            const std::string key = "k:" + std::to_string(i) + ":" + std::to_string(j % 50);
            const std::string value = "v" + std::to_string(i * 7919 + j);
            Reply set = command(c.get(), "SET %s %s", key.c_str(), value.c_str());
            if (!set || set->type != REDIS_REPLY_STATUS || std::string(set->str) != "OK")
              return "SET " + key + " failed";
            Reply get = command(c.get(), "GET %s", key.c_str());
            if (!get || get->type != REDIS_REPLY_STRING || std::string(get->str, get->len) != value)
              return "GET " + key + ": wrong reply";
          }
          return "";
        }));
      for (auto& t : tasks) CHECK(t.join() == "");
      took = seconds_since(start);
    });
    MESSAGE("200 x 1,000 SET+GET: " << took << " s, " << (2.0 * fibers * rounds / took) << " commands/s");
  }

  TEST_CASE("hiredis: a cancel reaches a fiber blocked in BLPOP; the connection reports an I/O error") {
    skein::run([] {
      int err = 0;
      auto t = skein::spawn([&] {
        Context c = connect_redis();
        REQUIRE(c);
        Reply r = command(c.get(), "BLPOP cancelled 10");
        err = c->err;
        return r == nullptr;
      });
      skein::sleep_for(std::chrono::milliseconds(100));
      const auto start = skein::Clock::now();
      t.cancel();
      bool failed = false;
      try {
        failed = t.join();
      } catch (const std::system_error&) {
        failed = true;
      }
      CHECK(failed);
      CHECK(err == REDIS_ERR_IO);
      CHECK(seconds_since(start) < 1.0);
    });
  }

  TEST_CASE("samples/redis_fanout runs against the server") {
    const char* exe = std::getenv("HOOKS_REDIS_FANOUT");
    if (!exe) return;
    hooks_test::Child fanout(
        {exe, "--port", std::to_string(redis_port), "--fibers", "50", "--seconds", "0.5"}, true);
    std::string out;
    while (auto line = fanout.line(std::chrono::seconds(20))) out += *line + "\n";
    const int status = fanout.reap(std::chrono::seconds(20));
    CAPTURE(out);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(out.find("skein hooks: read write") != std::string::npos);
    CHECK(out.find("50 fibers") != std::string::npos);
  }
}

int main(int argc, char** argv) {
  const std::string redis = hooks_test::find_program("redis-server");
  if (redis.empty()) {
    std::printf("SKIP: redis-server is not installed (Debian: redis-server; scripts/deps installs it)\n");
    return 77;
  }
  std::optional<hooks_test::Child> server;
  for (int attempt = 0; attempt < 3 && !server; ++attempt) {
    redis_port = hooks_test::free_port();
    server.emplace(std::vector<std::string>{
        redis, "--port", std::to_string(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
        "no", "--protected-mode", "no", "--loglevel", "warning", "--daemonize", "no"});
    if (!hooks_test::wait_listening(redis_port, std::chrono::seconds(10))) server.reset();
  }
  if (!server) {
    std::fprintf(stderr, "redis-server did not start\n");
    return 1;
  }
  std::printf("redis-server pid %d on 127.0.0.1:%d\n%s\n", static_cast<int>(server->pid()), redis_port,
              skein::hooks::describe().c_str());
  doctest::Context context(argc, argv);
  const int result = context.run();
  server->stop();
  return result;
}
