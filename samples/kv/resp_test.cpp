// resp_test.cpp: unit tests of RespParser and the reply writers (doctest, suite 'samples'):
// multibulk and inline requests, pipelining, input split at every byte, the limits (refused
// without allocating what a length claims), malformed requests.

#include <doctest/doctest.h>

#include "alloc_count.hpp"
#include "resp.hpp"

#include <cstddef>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

using skein_samples::kv::Limits;
using skein_samples::kv::RespParser;
using Status = RespParser::Status;

namespace {

using Command = std::vector<std::string>;

std::string multibulk(const Command& args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string& a : args) s += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return s;
}

Command to_command(const RespParser& p) {
  return Command(p.args().begin(), p.args().end());
}

// Parses all of `data` at once: the commands, and the error that ended it if any.
std::vector<Command> parse_all(std::string_view data, std::string* error = nullptr, Limits limits = {}) {
  RespParser p(limits);
  std::vector<Command> out;
  for (;;) {
    const Status st = p.parse(data);
    if (st == Status::incomplete) break;
    if (st == Status::error) {
      if (error) *error = std::string(p.error());
      break;
    }
    if (st == Status::command) out.push_back(to_command(p));
    REQUIRE(p.consumed() > 0);
    data.remove_prefix(p.consumed());
  }
  return out;
}

// Feeds `data` as a connection would see it arriving in two reads split at `cut`: the pending
// bytes are copied to a fresh buffer after each read (so the parser must not keep pointers).
std::vector<Command> parse_split(std::string_view data, std::size_t cut) {
  RespParser p;
  std::vector<Command> out;
  std::string pending;
  for (std::string_view piece : {data.substr(0, cut), data.substr(cut)}) {
    pending = std::string(pending) + std::string(piece);
    std::string_view view = pending;
    for (;;) {
      const Status st = p.parse(view);
      if (st == Status::incomplete) {
        CHECK(p.wanted() > view.size());
        break;
      }
      REQUIRE(st != Status::error);
      if (st == Status::command) out.push_back(to_command(p));
      view.remove_prefix(p.consumed());
    }
    pending = std::string(view);
  }
  CHECK(pending.empty());
  return out;
}

}  // namespace

TEST_CASE("parse_int64 is Redis's string2ll") {
  using skein_samples::kv::parse_int64;
  std::int64_t v = 7;
  CHECK((parse_int64("0", v) && v == 0));
  CHECK((parse_int64("42", v) && v == 42));
  CHECK((parse_int64("-42", v) && v == -42));
  CHECK((parse_int64("9223372036854775807", v) && v == INT64_MAX));
  CHECK((parse_int64("-9223372036854775808", v) && v == INT64_MIN));
  for (const char* bad : {"", "-", "+1", "01", "-0", "00", " 1", "1 ", "1x", "9223372036854775808",
                          "-9223372036854775809", "123456789012345678901", "0x10", "1.5"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_int64(bad, v));
  }
}

TEST_CASE("a multibulk command") {
  RespParser p;
  const std::string data = multibulk({"SET", "key", "value"});
  REQUIRE(p.parse(data) == Status::command);
  CHECK(to_command(p) == Command{"SET", "key", "value"});
  CHECK(p.consumed() == data.size());
  // The arguments are views into the input, not copies.
  CHECK(p.args()[1].data() == data.data() + data.find("key"));
}

TEST_CASE("bulk strings are binary-safe") {
  const std::string value("a\r\nb\0c$*\n", 10);
  CHECK(parse_all(multibulk({"SET", "k", value})) == std::vector<Command>{{"SET", "k", value}});
  CHECK(parse_all(multibulk({"SET", "", ""})) == std::vector<Command>{{"SET", "", ""}});
}

TEST_CASE("pipelined commands, multibulk and inline mixed") {
  const std::string data = multibulk({"PING"}) + "GET a\r\n" + multibulk({"SET", "a", "1"}) + "ECHO x\n";
  CHECK(parse_all(data) == std::vector<Command>{{"PING"}, {"GET", "a"}, {"SET", "a", "1"}, {"ECHO", "x"}});
}

TEST_CASE("input split at every byte boundary gives the same commands") {
  const std::string value(300, 'v');
  const std::string data = multibulk({"SET", "key", value}) + "  get   key \r\n" +
                           multibulk({"MGET", "a", "", "c"}) + "*0\r\n\r\n" +
                           multibulk({"ECHO", std::string("\r\n\0", 3)}) + "set 'q q' \"x\\x41\"\r\n";
  const std::vector<Command> expected = {{"SET", "key", value},
                                         {"get", "key"},
                                         {"MGET", "a", "", "c"},
                                         {"ECHO", std::string("\r\n\0", 3)},
                                         {"set", "q q", "xA"}};
  REQUIRE(parse_all(data) == expected);
  for (std::size_t cut = 0; cut <= data.size(); ++cut) {
    CAPTURE(cut);
    CHECK(parse_split(data, cut) == expected);
  }
}

TEST_CASE("fed one byte at a time, the parser resumes instead of rescanning") {
  RespParser p;
  const std::string data = multibulk({"SET", "key", std::string(1000, 'x')});
  for (std::size_t n = 0; n < data.size(); ++n) {
    REQUIRE(p.parse(std::string_view(data).substr(0, n)) == Status::incomplete);
    CHECK(p.wanted() > n);
    CHECK(p.wanted() <= data.size());
  }
  REQUIRE(p.parse(data) == Status::command);
  CHECK(p.args()[2].size() == 1000);
}

TEST_CASE("a large bulk: wanted() says how much to read") {
  RespParser p;
  const std::string head = "*2\r\n$3\r\nSET\r\n$100000\r\n";
  REQUIRE(p.parse(head) == Status::incomplete);
  CHECK(p.wanted() == head.size() + 100000 + 2);
}

TEST_CASE("empty requests are skipped without a reply") {
  RespParser p;
  for (const std::string_view data : {"*0\r\n", "*-1\r\n", "*-100\r\n", "\r\n", "\n", "   \t \r\n"}) {
    CAPTURE(data);
    REQUIRE(p.parse(data) == Status::skip);
    CHECK(p.consumed() == data.size());
  }
  CHECK(parse_all("\r\n*0\r\nPING\r\n") == std::vector<Command>{{"PING"}});
}

TEST_CASE("inline commands split as sdssplitargs") {
  CHECK(parse_all("SET a b\r\n") == std::vector<Command>{{"SET", "a", "b"}});
  CHECK(parse_all("SET a b\n") == std::vector<Command>{{"SET", "a", "b"}});
  CHECK(parse_all("set \"a b\" 'c d'\r\n") == std::vector<Command>{{"set", "a b", "c d"}});
  CHECK(parse_all("echo \"\\n\\r\\t\\b\\a\\\\\\\"\\x41\\q\"\r\n") ==
        std::vector<Command>{{"echo", "\n\r\t\b\a\\\"Aq"}});
  CHECK(parse_all("echo 'it\\'s' \"\"\r\n") == std::vector<Command>{{"echo", "it's", ""}});
  CHECK(parse_all("ab\"cd\" x\r\n") == std::vector<Command>{{"abcd", "x"}});
  // Words end at space, \t, \r and \n, not at \v or \f (which are only skipped between words).
  CHECK(parse_all("GET a\vb\fc\r\n") == std::vector<Command>{{"GET", "a\vb\fc"}});
  CHECK(parse_all("GET \v\f b\t\tc\r\n") == std::vector<Command>{{"GET", "b", "c"}});
  CHECK(parse_all("echo \"a\"\v\r\n") == std::vector<Command>{{"echo", "a"}});
  // Redis looks for the '\n' with strchr, which stops at a NUL: the line never ends, and the
  // request waits until it is too big.
  {
    RespParser p;
    CHECK(p.parse(std::string("PING\0junk\r\nPING\r\n", 17)) == Status::incomplete);
    std::string error;
    CHECK(parse_all(std::string("PING\0", 5) + std::string(70000, '\n'), &error).empty());
    CHECK(error == "Protocol error: too big inline request");
  }
  for (const std::string_view bad : {"echo \"abc\r\n", "echo 'abc\r\n", "echo \"a\"b\r\n", "echo 'a'b\r\n"}) {
    CAPTURE(bad);
    std::string error;
    CHECK(parse_all(bad, &error).empty());
    CHECK(error == "Protocol error: unbalanced quotes in request");
  }
}

TEST_CASE("bulk and multibulk lengths at and over the limits, without allocating them") {
  RespParser p;
  // Exactly the limits: accepted, waiting for the data, and nothing reserved for it.
  std::size_t before = skein_samples::kv::test::allocated_bytes();
  REQUIRE(p.parse("*1\r\n$536870912\r\n") == Status::incomplete);
  CHECK(p.wanted() == 16 + 536870912 + 2);
  CHECK(skein_samples::kv::test::allocated_bytes() - before < 1024);
  p.reset();
  before = skein_samples::kv::test::allocated_bytes();
  REQUIRE(p.parse("*1048576\r\n$1\r\nx\r\n") == Status::incomplete);
  CHECK(skein_samples::kv::test::allocated_bytes() - before < 1024);
  p.reset();

  std::string error;
  before = skein_samples::kv::test::allocated_bytes();
  CHECK(parse_all("*1\r\n$536870913\r\nabc", &error).empty());
  CHECK(error == "Protocol error: invalid bulk length");
  CHECK(parse_all("*1\r\n$9223372036854775807\r\n", &error).empty());
  CHECK(error == "Protocol error: invalid bulk length");
  CHECK(parse_all("*1048577\r\n", &error).empty());
  CHECK(error == "Protocol error: invalid multibulk length");
  CHECK(parse_all("*9223372036854775807\r\n", &error).empty());
  CHECK(error == "Protocol error: invalid multibulk length");
  CHECK(skein_samples::kv::test::allocated_bytes() - before < 4096);

  // Smaller limits, as a caller may set them.
  Limits small;
  small.max_bulk = 4;
  small.max_multibulk = 2;
  CHECK(parse_all(multibulk({"GET", "abcd"}), nullptr, small).size() == 1);
  CHECK(parse_all(multibulk({"GET", "abcde"}), &error, small).empty());
  CHECK(error == "Protocol error: invalid bulk length");
  CHECK(parse_all(multibulk({"a", "b", "c"}), &error, small).empty());
  CHECK(error == "Protocol error: invalid multibulk length");
}

TEST_CASE("malformed multibulk requests") {
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"*abc\r\n", "Protocol error: invalid multibulk length"},
      {"*+1\r\n", "Protocol error: invalid multibulk length"},
      {"*01\r\n", "Protocol error: invalid multibulk length"},
      {"*\r\n", "Protocol error: invalid multibulk length"},
      {"*1\rX", "Protocol error: invalid multibulk length"},
      {"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"},
      {"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"},
      {"*1\r\n$x\r\n", "Protocol error: invalid bulk length"},
      {"*1\r\n$\r\n", "Protocol error: invalid bulk length"},
      {"*1\r\n$3\rXGET\r\n", "Protocol error: invalid bulk length"},
      {"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"},
      {"*2\r\n$3\r\nGET\r\n+OK\r\n", "Protocol error: expected '$', got '+'"},
      {"*1\r\n*1\r\n", "Protocol error: expected '$', got '*'"},
      {"*1\r\n$3\r\nGETxx", "Protocol error: expected CRLF after bulk"},
      {"*1\r\n$3\r\nGET\n\r", "Protocol error: expected CRLF after bulk"},
  };
  for (const auto& [data, message] : cases) {
    CAPTURE(data);
    std::string error;
    CHECK(parse_all(data, &error).empty());
    CHECK(error == message);
  }
  // A command before the malformed one is still parsed.
  std::string error;
  CHECK(parse_all("PING\r\n*1\r\n:1\r\n", &error) == std::vector<Command>{{"PING"}});
  CHECK(error == "Protocol error: expected '$', got ':'");
}

TEST_CASE("lines without an end are refused past max_inline") {
  std::string error;
  CHECK(parse_all("*" + std::string(70000, '1'), &error).empty());
  CHECK(error == "Protocol error: too big mbulk count string");
  CHECK(parse_all("*1\r\n$" + std::string(70000, '1'), &error).empty());
  CHECK(error == "Protocol error: too big bulk count string");
  CHECK(parse_all(std::string(70000, 'a'), &error).empty());
  CHECK(error == "Protocol error: too big inline request");
  // Under the limit they are only incomplete.
  RespParser p;
  CHECK(p.parse(std::string(60000, 'a')) == Status::incomplete);
}

TEST_CASE("a line over the limit is refused whether or not its end has arrived") {
  Limits limits;
  limits.max_inline = 16;
  std::string error;
  for (const auto& [data, message] : {
           std::pair{std::string(17, 'x') + "\r\n", "Protocol error: too big inline request"},
           std::pair{"*" + std::string(16, '1') + "\r\n", "Protocol error: too big mbulk count string"},
           std::pair{"*1\r\n$" + std::string(16, '1') + "\r\n", "Protocol error: too big bulk count string"},
       }) {
    CAPTURE(data);
    CHECK(parse_all(data, &error, limits).empty());
    CHECK(error == message);
    RespParser p(limits);
    CHECK(p.parse(data.substr(0, data.size() - 2)) == Status::error);  // the same without its end
    CHECK(p.error() == message);
  }
  // 15 bytes, the CR and the LF: the LF is the 17th byte, within the 16 the limit allows before it.
  CHECK(parse_all(std::string(15, 'x') + "\r\n", &error, limits) ==
        std::vector<Command>{{std::string(15, 'x')}});
}

TEST_CASE("reply writers") {
  using namespace skein_samples::kv;
  std::string out;
  append_simple(out, "OK");
  append_error(out, "ERR bad\r\nthing \n");
  append_integer(out, -9223372036854775807 - 1);
  append_integer(out, 0);
  append_bulk(out, std::string_view("a\0b", 3));
  append_bulk(out, "");
  append_null(out);
  append_array_header(out, 3);
  // CR and LF are trimmed off the ends (not the blank before them) and blanked inside.
  CHECK(out ==
        std::string(
            "+OK\r\n-ERR bad  thing \r\n:-9223372036854775808\r\n:0\r\n$3\r\na\0b\r\n$0\r\n\r\n$-1\r\n*3\r\n",
            74));
}
