// kv_session_test.cpp: unit tests of KvSession (doctest, suite 'samples'): each command's replies
// and Redis's error messages, pipelining, input split at every byte, protocol errors, the output
// batch, and no allocation per command once warm.

#include <doctest/doctest.h>

#include "alloc_count.hpp"
#include "kv_session.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <new>
#include <string>
#include <string_view>
#include <vector>

using skein_samples::kv::KvSession;
using skein_samples::kv::Store;

namespace {

std::int64_t g_now = 5'000'000;
std::int64_t fake_clock() {
  return g_now;
}

std::string multibulk(std::initializer_list<std::string_view> args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string_view a : args)
    s.append("$").append(std::to_string(a.size())).append("\r\n").append(a).append("\r\n");
  return s;
}

// A store on the test's clock and a session on it; run() sends one command and returns the reply.
struct Fixture {
  Store store{&fake_clock};
  KvSession session{store};

  std::string raw(std::string_view bytes) {
    const std::size_t used = session.feed(bytes);
    CHECK(used == bytes.size());
    std::string out(session.output());
    session.clear_output();
    return out;
  }
  std::string run(std::initializer_list<std::string_view> args) { return raw(multibulk(args)); }
};

const std::string kOk = "+OK\r\n";
const std::string kNil = "$-1\r\n";
const std::string kNotInteger = "-ERR value is not an integer or out of range\r\n";
const std::string kSyntax = "-ERR syntax error\r\n";

std::string integer(std::int64_t v) {
  return ":" + std::to_string(v) + "\r\n";
}
std::string bulk(std::string_view v) {
  return "$" + std::to_string(v.size()) + "\r\n" + std::string(v) + "\r\n";
}
std::string arity(std::string_view name) {
  return "-ERR wrong number of arguments for '" + std::string(name) + "' command\r\n";
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "PING, ECHO, unknown commands, arity, case") {
  CHECK(run({"PING"}) == "+PONG\r\n");
  CHECK(run({"ping", "hello world"}) == bulk("hello world"));
  CHECK(run({"PING", "a", "b"}) == arity("ping"));
  CHECK(run({"ECHO", std::string_view("x\0y", 3)}) == bulk(std::string_view("x\0y", 3)));
  CHECK(run({"ECHO"}) == arity("echo"));
  CHECK(run({"gEt"}) == arity("get"));
  CHECK(run({"GET", "a", "b"}) == arity("get"));
  CHECK(run({"SET", "a"}) == arity("set"));
  CHECK(run({"FOO"}) == "-ERR unknown command 'FOO', with args beginning with: \r\n");
  CHECK(run({"foo", "a", "b c"}) == "-ERR unknown command 'foo', with args beginning with: 'a' 'b c' \r\n");
  CHECK(run({"verylongcommandname"}) ==
        "-ERR unknown command 'verylongcommandname', with args beginning with: \r\n");
  // The argument list is cut near 128 characters, as Redis cuts it.
  const std::string long_arg(200, 'x');
  CHECK(run({"nope", long_arg, "more"}) ==
        "-ERR unknown command 'nope', with args beginning with: '" + std::string(128, 'x') + "' \r\n");
  // A newline in a name cannot break the reply's framing.
  CHECK(run({"a\r\nb"}) == "-ERR unknown command 'a  b', with args beginning with: \r\n");
  CHECK(session.commands() == 13);
  CHECK_FALSE(session.should_close());
}

TEST_CASE_FIXTURE(Fixture, "SET and GET, with their options") {
  CHECK(run({"GET", "k"}) == kNil);
  CHECK(run({"SET", "k", "v"}) == kOk);
  CHECK(run({"GET", "k"}) == bulk("v"));
  CHECK(run({"SET", "k", "w", "NX"}) == kNil);
  CHECK(run({"SET", "k2", "w", "xx"}) == kNil);
  CHECK(run({"SET", "k", "w", "XX"}) == kOk);
  CHECK(run({"SET", "k", "x", "GET"}) == bulk("w"));
  CHECK(run({"SET", "new", "x", "GET"}) == kNil);
  CHECK(run({"SET", "new", "y", "NX", "GET"}) == bulk("x"));  // not set, old value returned
  CHECK(run({"GET", "new"}) == bulk("x"));

  CHECK(run({"SET", "t", "v", "EX", "10"}) == kOk);
  CHECK(run({"TTL", "t"}) == integer(10));
  CHECK(run({"PTTL", "t"}) == integer(10000));
  CHECK(run({"SET", "t", "v", "PX", "1500"}) == kOk);
  CHECK(run({"TTL", "t"}) == integer(2));  // rounded, as Redis rounds
  CHECK(run({"SET", "t", "w", "KEEPTTL"}) == kOk);
  CHECK(run({"PTTL", "t"}) == integer(1500));
  CHECK(run({"SET", "t", "v", "EX", "5", "EX", "7"}) == kOk);  // the last one wins, as in Redis
  CHECK(run({"TTL", "t"}) == integer(7));
  g_now += 7000;
  CHECK(run({"GET", "t"}) == kNil);
  CHECK(run({"TTL", "t"}) == integer(-2));

  CHECK(run({"SET", "k", "v", "EX", "0"}) == "-ERR invalid expire time in 'set' command\r\n");
  CHECK(run({"SET", "k", "v", "PX", "-5"}) == "-ERR invalid expire time in 'set' command\r\n");
  CHECK(run({"SET", "k", "v", "EX", "9223372036854775"}) == "-ERR invalid expire time in 'set' command\r\n");
  CHECK(run({"SET", "k", "v", "PX", "9223372036854775807"}) ==
        "-ERR invalid expire time in 'set' command\r\n");
  CHECK(run({"SET", "k", "v", "EX", "ten"}) == kNotInteger);
  CHECK(run({"SET", "k", "v", "EX", "1.5"}) == kNotInteger);
  CHECK(run({"SET", "k", "v", "EX"}) == kSyntax);
  CHECK(run({"SET", "k", "v", "EX", "10", "PX", "10"}) == kSyntax);
  CHECK(run({"SET", "k", "v", "KEEPTTL", "EX", "10"}) == kSyntax);
  CHECK(run({"SET", "k", "v", "NX", "XX"}) == kSyntax);
  CHECK(run({"SET", "k", "v", "BOGUS"}) == kSyntax);
  CHECK(run({"GET", "k"}) == bulk("x"));  // none of the failed SETs changed it
}

TEST_CASE_FIXTURE(Fixture, "INCR, DECR, INCRBY, DECRBY") {
  CHECK(run({"INCR", "n"}) == integer(1));
  CHECK(run({"INCRBY", "n", "41"}) == integer(42));
  CHECK(run({"DECR", "n"}) == integer(41));
  CHECK(run({"DECRBY", "n", "-9"}) == integer(50));
  CHECK(run({"GET", "n"}) == bulk("50"));
  CHECK(run({"INCRBY", "n", "x"}) == kNotInteger);
  CHECK(run({"INCRBY", "n", "1 "}) == kNotInteger);
  CHECK(run({"SET", "s", "hello"}) == kOk);
  CHECK(run({"INCR", "s"}) == kNotInteger);
  CHECK(run({"SET", "max", "9223372036854775807"}) == kOk);
  CHECK(run({"INCR", "max"}) == "-ERR increment or decrement would overflow\r\n");
  CHECK(run({"DECRBY", "n", "-9223372036854775808"}) == "-ERR decrement would overflow\r\n");
  CHECK(run({"INCRBY", "n", "9223372036854775808"}) == kNotInteger);
  CHECK(run({"INCR"}) == arity("incr"));
  CHECK(run({"INCRBY", "n"}) == arity("incrby"));
}

TEST_CASE_FIXTURE(Fixture, "MSET, MGET, DEL, EXISTS, DBSIZE, FLUSHALL") {
  CHECK(run({"MSET", "a", "1", "b", "2"}) == kOk);
  CHECK(run({"MSET", "a", "1", "b"}) == arity("mset"));
  CHECK(run({"MGET", "a", "x", "b"}) == "*3\r\n" + bulk("1") + kNil + bulk("2"));
  CHECK(run({"EXISTS", "a", "a", "x"}) == integer(2));
  CHECK(run({"DBSIZE"}) == integer(2));
  CHECK(run({"DBSIZE", "x"}) == arity("dbsize"));
  CHECK(run({"DEL", "a", "x"}) == integer(1));
  CHECK(run({"DEL", "a"}) == integer(0));
  CHECK(run({"DBSIZE"}) == integer(1));
  CHECK(run({"FLUSHALL"}) == kOk);
  CHECK(run({"DBSIZE"}) == integer(0));
  CHECK(run({"SET", "a", "1"}) == kOk);
  CHECK(run({"FLUSHALL", "async"}) == kOk);
  CHECK(run({"FLUSHDB", "SYNC"}) == kOk);
  CHECK(run({"FLUSHALL", "later"}) == kSyntax);
  CHECK(run({"FLUSHALL", "sync", "x"}) == kSyntax);
}

TEST_CASE_FIXTURE(Fixture, "EXPIRE, PEXPIRE, TTL, PTTL, PERSIST") {
  CHECK(run({"EXPIRE", "k", "10"}) == integer(0));
  CHECK(run({"TTL", "k"}) == integer(-2));
  CHECK(run({"SET", "k", "v"}) == kOk);
  CHECK(run({"TTL", "k"}) == integer(-1));
  CHECK(run({"PTTL", "k"}) == integer(-1));
  CHECK(run({"EXPIRE", "k", "10"}) == integer(1));
  CHECK(run({"TTL", "k"}) == integer(10));
  CHECK(run({"EXPIRE", "k", "20", "NX"}) == integer(0));
  CHECK(run({"EXPIRE", "k", "20", "gt"}) == integer(1));
  CHECK(run({"EXPIRE", "k", "15", "GT"}) == integer(0));
  CHECK(run({"PEXPIRE", "k", "15500", "LT"}) == integer(1));
  CHECK(run({"TTL", "k"}) == integer(16));
  CHECK(run({"PERSIST", "k"}) == integer(1));
  CHECK(run({"PERSIST", "k"}) == integer(0));
  CHECK(run({"EXPIRE", "k", "5", "XX"}) == integer(0));
  CHECK(run({"EXPIRE", "k", "x"}) == kNotInteger);
  CHECK(run({"EXPIRE", "k", "5", "NX", "XX"}) ==
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n");
  CHECK(run({"EXPIRE", "k", "5", "GT", "LT"}) ==
        "-ERR GT and LT options at the same time are not compatible\r\n");
  CHECK(run({"EXPIRE", "k", "5", "SOON"}) == "-ERR Unsupported option SOON\r\n");
  CHECK(run({"EXPIRE", "k", "9223372036854775807"}) == "-ERR invalid expire time in 'expire' command\r\n");
  CHECK(run({"PEXPIRE", "k", "9223372036854775807"}) == "-ERR invalid expire time in 'pexpire' command\r\n");
  CHECK(run({"EXPIRE", "k"}) == arity("expire"));
  // A deadline in the past deletes the key.
  CHECK(run({"EXPIRE", "k", "-1"}) == integer(1));
  CHECK(run({"EXISTS", "k"}) == integer(0));
  CHECK(run({"SET", "k", "v", "PX", "100"}) == kOk);
  g_now += 100;
  CHECK(run({"EXISTS", "k"}) == integer(0));
}

TEST_CASE_FIXTURE(Fixture, "SELECT, QUIT, COMMAND, CONFIG GET") {
  CHECK(run({"SELECT", "0"}) == kOk);
  CHECK(run({"SELECT", "1"}) == "-ERR DB index is out of range\r\n");
  CHECK(run({"SELECT", "x"}) == kNotInteger);
  CHECK(run({"COMMAND", "DOCS"}) == "*0\r\n");
  CHECK(run({"CONFIG", "GET", "save"}) == "*2\r\n" + bulk("save") + bulk(""));
  CHECK(run({"CONFIG", "GET", "appendonly", "SAVE", "maxmemory"}) ==
        "*4\r\n" + bulk("save") + bulk("") + bulk("appendonly") + bulk("no"));
  CHECK(run({"CONFIG", "GET"}) == arity("config|get"));
  CHECK(run({"CONFIG", "SET", "a", "b"}) == "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n");
  CHECK_FALSE(session.should_close());
  CHECK(run({"QUIT"}) == kOk);
  CHECK(session.should_close());
  // After QUIT nothing more is run.
  CHECK(session.feed(multibulk({"PING"})) == 0);
  CHECK(session.output().empty());
}

TEST_CASE_FIXTURE(Fixture, "inline commands") {
  CHECK(raw("SET greeting \"hello world\"\r\nGET greeting\r\nPING\n\r\n") ==
        kOk + bulk("hello world") + "+PONG\r\n");
  CHECK(raw("set 'a' 1\r\nincr a\r\n") == kOk + integer(2));
}

TEST_CASE_FIXTURE(Fixture, "pipelined commands: all replies, in order, from one feed") {
  std::string in;
  std::string expected;
  for (int i = 0; i < 100; ++i) {
    in += multibulk({"SET", "key" + std::to_string(i), std::to_string(i)});
    in += multibulk({"GET", "key" + std::to_string(i)});
    in += multibulk({"INCR", "counter"});
    expected += kOk + bulk(std::to_string(i)) + integer(i + 1);
  }
  CHECK(raw(in) == expected);
  CHECK(session.commands() == 300);
}

TEST_CASE("input split at every byte boundary gives the same replies") {
  const std::string in = multibulk({"SET", "k", "v\r\nw"}) + "GET k\r\n" +
                         multibulk({"MSET", "a", "1", "b", "22"}) + "*0\r\n" +
                         multibulk({"MGET", "a", "b", "c"}) + "incr a\n" + multibulk({"DEL", "a", "b", "k"});
  std::string whole;
  {
    Store store(&fake_clock);
    KvSession s(store);
    CHECK(s.feed(in) == in.size());
    whole = std::string(s.output());
  }
  CHECK(whole ==
        kOk + bulk("v\r\nw") + kOk + "*3\r\n" + bulk("1") + bulk("22") + kNil + integer(2) + integer(3));
  for (std::size_t cut = 0; cut <= in.size(); ++cut) {
    CAPTURE(cut);
    Store store(&fake_clock);
    KvSession s(store);
    // As the server's loop: unconsumed bytes stay at the front of the buffer, more are appended.
    std::string pending(in.substr(0, cut));
    pending.erase(0, s.feed(pending));
    pending += in.substr(cut);
    pending.erase(0, s.feed(pending));
    CHECK(pending.empty());
    CHECK(s.output() == whole);
  }
}

TEST_CASE_FIXTURE(Fixture, "a protocol error: the replies before it, the error, then close") {
  const std::string in = multibulk({"SET", "a", "1"}) + "*1\r\n$-7\r\n" + multibulk({"SET", "a", "2"});
  const std::size_t used = session.feed(in);
  CHECK(session.output() == kOk + "-ERR Protocol error: invalid bulk length\r\n");
  CHECK(session.should_close());
  CHECK(used < in.size());
  session.clear_output();
  CHECK(session.feed(multibulk({"GET", "a"})) == 0);
  CHECK(session.output().empty());
  std::string out;
  store.get("a", [&](std::string_view v) { out = std::string(v); });
  CHECK(out == "1");
}

TEST_CASE("protocol errors from hostile input") {
  const std::pair<std::string, std::string> cases[] = {
      {"*1\r\n$536870913\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
      {"*99999999\r\n", "-ERR Protocol error: invalid multibulk length\r\n"},
      {"*2\r\n$3\r\nGET\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"},
      {"*1\r\n$4\r\nPINGxx", "-ERR Protocol error: expected CRLF after bulk\r\n"},
      {"echo \"unterminated\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"},
      {std::string(70000, 'x'), "-ERR Protocol error: too big inline request\r\n"},
  };
  for (const auto& [in, reply] : cases) {
    CAPTURE(in.substr(0, 40));
    Store store(&fake_clock);
    KvSession s(store);
    s.feed(in);
    CHECK(s.output() == reply);
    CHECK(s.should_close());
  }
}

TEST_CASE_FIXTURE(Fixture, "feed stops at the output batch, and goes on where it stopped") {
  const std::string value(100 * 1024, 'v');
  CHECK(run({"SET", "big", value}) == kOk);
  std::string in;
  for (int i = 0; i < 30; ++i) in += multibulk({"GET", "big"});  // 3 MB of replies
  std::string out;
  std::size_t batches = 0;
  std::string_view rest = in;
  while (!rest.empty()) {
    const std::size_t used = session.feed(rest);
    REQUIRE(used > 0);
    CHECK(session.output().size() < KvSession::kOutputBatch + value.size() + 64);
    out += session.output();
    session.clear_output();
    rest.remove_prefix(used);
    ++batches;
  }
  CHECK(batches == 3);
  std::string expected;
  for (int i = 0; i < 30; ++i) expected += bulk(value);
  CHECK(out == expected);
}

TEST_CASE_FIXTURE(Fixture, "a warm session allocates nothing per command") {
  const std::string in = multibulk({"SET", "key:000001", "xxx"}) + multibulk({"GET", "key:000001"}) +
                         multibulk({"INCR", "counter"}) + multibulk({"GET", "missing"}) +
                         multibulk({"MGET", "key:000001", "counter"}) + multibulk({"EXISTS", "key:000001"}) +
                         multibulk({"TTL", "key:000001"}) + multibulk({"PING"}) + "GET key:000001\r\n";
  for (int i = 0; i < 10; ++i) raw(in);  // warm: the keys exist, the buffers have grown
  const std::size_t before = skein_samples::kv::test::allocations();
  for (int i = 0; i < 1000; ++i) {
    session.feed(in);
    session.clear_output();
  }
  CHECK(skein_samples::kv::test::allocations() - before == 0);
}
