// http_session_test.cpp: unit tests of HttpSession (doctest, suite 'samples'): routes, escaping,
// keep-alive rules, pipelining, arbitrary splits of the input, errors and limits.

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "http_session.hpp"

#include <cstddef>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

using skein_samples::http::HttpSession;

// Counts every allocation, for the test that a warm session allocates nothing per request.
namespace {
std::size_t g_allocations = 0;
}  // namespace

void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC matches the free() below against the new-expressions it inlines it into, not against the
// operator new above, and calls that a mismatch.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

struct Response {
  int status = 0;
  std::string head;  // status line and headers, up to the blank line
  std::string body;

  // The value of header `name` (case as written by the session), or "" when absent.
  std::string header(std::string_view name) const {
    const std::string key = "\r\n" + std::string(name) + ": ";
    const std::size_t at = head.find(key);
    if (at == std::string::npos) return {};
    const std::size_t begin = at + key.size();
    return head.substr(begin, head.find("\r\n", begin) - begin);
  }
};

// Splits a session's output into responses, using Content-Length (no body for `head_requests`).
std::vector<Response> parse(std::string_view out, bool head_requests = false) {
  std::vector<Response> responses;
  while (!out.empty()) {
    Response r;
    REQUIRE(out.starts_with("HTTP/1.1 "));
    const std::size_t end = out.find("\r\n\r\n");
    REQUIRE(end != std::string_view::npos);
    r.head = std::string(out.substr(0, end + 2));
    r.status = std::stoi(r.head.substr(9, 3));
    out.remove_prefix(end + 4);
    const std::size_t length = std::stoul(r.header("Content-Length"));
    if (!head_requests) {
      REQUIRE(out.size() >= length);
      r.body = std::string(out.substr(0, length));
      out.remove_prefix(length);
    }
    responses.push_back(std::move(r));
  }
  return responses;
}

std::vector<Response> run(HttpSession& s, std::string_view in, bool head_requests = false) {
  s.feed(in.data(), in.size());
  auto responses = parse(s.output(), head_requests);
  s.clear_output();
  return responses;
}

std::vector<Response> run(std::string_view in) {
  HttpSession s;
  return run(s, in);
}

}  // namespace

TEST_SUITE("samples") {
  TEST_CASE("GET / is the index page") {
    HttpSession s;
    const auto r = run(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 200);
    CHECK(r[0].body == "<h1>Index Page</h1>");
    CHECK(r[0].header("Content-Type") == "text/html; charset=utf-8");
    CHECK(r[0].header("Content-Length") == "19");
    CHECK(r[0].header("Connection") == "");
    CHECK(r[0].header("Date").size() == 29);
    CHECK_FALSE(s.should_close());
    CHECK(s.responses() == 1);
  }

  TEST_CASE("GET /{name} says hello, %-decoded and HTML-escaped") {
    CHECK(run("GET /world HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, world</h1>");
    CHECK(run("GET /%3Cb%3E HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, &lt;b&gt;</h1>");
    CHECK(run("GET /a%20b%26c%22%27 HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, a b&amp;c&quot;&#39;</h1>");
    CHECK(run("GET /caf%C3%A9 HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, café</h1>");
    CHECK(run("GET /a%2Fb HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, a/b</h1>");
    // An invalid or cut-off escape stays as written.
    CHECK(run("GET /100%zz% HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, 100%zz%</h1>");
    // The query string is not part of the name.
    CHECK(run("GET /bob?x=<1> HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, bob</h1>");
    // Absolute form.
    CHECK(run("GET http://example.com/ann HTTP/1.1\r\n\r\n")[0].body == "<h1>Hello, ann</h1>");
    CHECK(run("GET http://example.com HTTP/1.1\r\n\r\n")[0].body == "<h1>Index Page</h1>");
  }

  TEST_CASE("other paths are 404, other methods 405") {
    for (const char* path : {"/a/b", "/a/", "//", "/a//b"}) {
      const auto r = run(std::string("GET ") + path + " HTTP/1.1\r\n\r\n");
      REQUIRE(r.size() == 1);
      CHECK(r[0].status == 404);
      CHECK(r[0].body == "404: Not Found");
    }
    CHECK(run("DELETE /a/b HTTP/1.1\r\n\r\n")[0].status == 404);
    CHECK(run("OPTIONS * HTTP/1.1\r\n\r\n")[0].status == 404);
    const auto r = run("POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 405);
    CHECK(r[0].header("Allow") == "GET, HEAD");
    CHECK(run("DELETE / HTTP/1.1\r\n\r\n")[0].status == 405);
  }

  TEST_CASE("HEAD gets GET's headers without the body") {
    HttpSession s;
    const auto r = run(s, "HEAD /x HTTP/1.1\r\n\r\n", true);
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 200);
    CHECK(r[0].header("Content-Length") == "17");
    CHECK(std::string_view(r[0].head).ends_with("\r\n"));
    CHECK_FALSE(s.should_close());
  }

  TEST_CASE("keep-alive: HTTP/1.1 by default, HTTP/1.0 only when asked") {
    HttpSession a;
    for (int i = 0; i < 3; ++i) {
      const auto r = run(a, "GET / HTTP/1.1\r\n\r\n");
      REQUIRE(r.size() == 1);
      CHECK_FALSE(a.should_close());
    }
    HttpSession b;
    auto r = run(b, "GET / HTTP/1.0\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].header("Connection") == "close");
    CHECK(b.should_close());

    HttpSession c;
    r = run(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].header("Connection") == "keep-alive");
    CHECK_FALSE(c.should_close());
    r = run(c, "GET /again HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].body == "<h1>Hello, again</h1>");
  }

  TEST_CASE("Connection: close is honoured and what follows it ignored") {
    HttpSession s;
    const auto r = run(s, "GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /more HTTP/1.1\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].header("Connection") == "close");
    CHECK(s.should_close());
    s.feed("GET / HTTP/1.1\r\n\r\n", 18);
    CHECK(s.output().empty());
    CHECK(s.responses() == 1);
  }

  TEST_CASE("pipelining: three requests in one feed, answered in order") {
    HttpSession s;
    const auto r = run(s,
                       "GET /one HTTP/1.1\r\n\r\n"
                       "GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
                       "GET / HTTP/1.1\r\n\r\n");
    REQUIRE(r.size() == 3);
    CHECK(r[0].body == "<h1>Hello, one</h1>");
    CHECK(r[1].body == "<h1>Hello, two</h1>");
    CHECK(r[2].body == "<h1>Index Page</h1>");
    CHECK_FALSE(s.should_close());
  }

  TEST_CASE("byte-by-byte feeding gives the same answers") {
    const std::string in =
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /two HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        "GET /%3Cb%3E?q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET / HTTP/1.0\r\n\r\n";
    HttpSession whole;
    whole.feed(in.data(), in.size());
    HttpSession bytes;
    std::string out;
    for (char c : in) {
      bytes.feed(&c, 1);
      out += bytes.output();
      bytes.clear_output();
    }
    // The Date header may differ if a second passed: compare everything else.
    const auto a = parse(whole.output());
    const auto b = parse(out);
    REQUIRE(a.size() == 4);
    REQUIRE(b.size() == 4);
    for (std::size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].status == b[i].status);
      CHECK(a[i].body == b[i].body);
    }
    CHECK(b[0].body == "<h1>Hello, one</h1>");
    CHECK(b[1].status == 405);
    CHECK(b[2].body == "<h1>Hello, &lt;b&gt;</h1>");
    CHECK(b[3].header("Connection") == "close");
    CHECK(bytes.should_close());
  }

  TEST_CASE("a malformed request gets 400 and the connection closes") {
    for (const char* bad : {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n", "GET / HTTP/x\r\n\r\n",
                            "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "\x01\x02\x03"}) {
      HttpSession s;
      const auto r = run(s, bad);
      REQUIRE(r.size() == 1);
      CHECK(r[0].status == 400);
      CHECK(r[0].body == "400: Bad Request");
      CHECK(r[0].header("Connection") == "close");
      CHECK(s.should_close());
    }
    // A good request first is still answered.
    HttpSession s;
    const auto r = run(s, "GET /ok HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n");
    REQUIRE(r.size() == 2);
    CHECK(r[0].status == 200);
    CHECK(r[1].status == 400);
  }

  TEST_CASE("oversized headers get 431 and close, however they are split") {
    const std::string big = "GET / HTTP/1.1\r\nX-Big: " + std::string(9000, 'a') + "\r\n\r\n";
    HttpSession whole;
    auto r = run(whole, big);
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 431);
    CHECK(whole.should_close());

    HttpSession bytes;
    std::string out;
    for (char c : big) {
      bytes.feed(&c, 1);
      out += bytes.output();
      bytes.clear_output();
    }
    r = parse(out);
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 431);

    // Exactly at the limit is fine; one byte more is not.
    HttpSession::Limits limits;
    limits.max_header_bytes = 64;
    std::string at_limit = "GET / HTTP/1.1\r\nX: ";
    at_limit += std::string(64 - at_limit.size() - 4, 'b') + "\r\n\r\n";
    REQUIRE(at_limit.size() == 64);
    HttpSession ok(limits);
    CHECK(run(ok, at_limit)[0].status == 200);
    HttpSession over(limits);
    at_limit.insert(20, "c");
    CHECK(run(over, at_limit)[0].status == 431);
    // The limit is per request: many small requests in one session are fine.
    HttpSession many(limits);
    std::string pipelined;
    for (int i = 0; i < 20; ++i) pipelined += "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK(run(many, pipelined).size() == 20);
  }

  TEST_CASE("request bodies are consumed, and limited") {
    HttpSession s;
    auto r = run(s,
                 "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nGET /x HTTP"
                 "GET /after HTTP/1.1\r\n\r\n");
    REQUIRE(r.size() == 2);
    CHECK(r[0].status == 405);
    CHECK(r[1].body == "<h1>Hello, after</h1>");
    CHECK_FALSE(s.should_close());

    // A body may arrive in pieces, across feeds.
    run(s, "GET / HTTP/1.1\r\nContent-Length: 6\r\n\r\nab");
    r = run(s, "cdefGET / HTTP/1.1\r\n\r\n");
    CHECK(r.size() == 2);

    HttpSession::Limits limits;
    limits.max_body_bytes = 10;
    HttpSession big(limits);
    r = run(big, "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 413);
    CHECK(big.should_close());

    HttpSession chunked(limits);
    r = run(chunked,
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 413);
    CHECK(chunked.should_close());
  }

  TEST_CASE("upgrade requests are answered, then the connection closes") {
    HttpSession s;
    const auto r = run(s, "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nXXXX");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 200);
    CHECK(r[0].header("Connection") == "close");
    CHECK(s.should_close());
  }

  TEST_CASE("a warm keep-alive session allocates nothing per request") {
    HttpSession s;
    const std::string requests =
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        "GET /%3Cname%3E-that-is-longer-than-the-small-string-buffer HTTP/1.1\r\nHost: localhost\r\n\r\n"
        "GET /a/b HTTP/1.1\r\n\r\n";
    for (int i = 0; i < 3; ++i) {  // warm up: the buffers grow to fit
      s.feed(requests.data(), requests.size());
      s.clear_output();
    }
    const std::size_t before = g_allocations;
    ::operator delete(::operator new(8));  // the counter does count (a call, not elidable)
    REQUIRE(g_allocations == before + 1);
    for (int i = 0; i < 1000; ++i) {
      s.feed(requests.data(), requests.size());
      s.clear_output();
    }
    CHECK(g_allocations - before == 1);
    CHECK(s.responses() == 3 * 1003);
  }

  TEST_CASE("an unsupported HTTP major version gets 505") {
    HttpSession s;
    const auto r = run(s, "GET / HTTP/2.0\r\n\r\n");
    REQUIRE(r.size() == 1);
    CHECK(r[0].status == 505);
    CHECK(s.should_close());
  }
}
