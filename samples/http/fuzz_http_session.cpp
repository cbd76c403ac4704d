// fuzz_http_session.cpp: a libFuzzer target for HttpSession (scripts/fuzz builds and runs it).
//
// Input: the first byte picks the limits and how the rest is split into feeds; the rest is what a
// peer sends. Invariants checked on every input:
//   - the output is a sequence of well-formed responses: each starts with "HTTP/1.1 ", has one
//     Content-Length, and is followed by exactly that many body bytes (or none, for a HEAD: our
//     bodies never start with "HTTP/1.1 ", so a response followed at once by another one, or by
//     the end, with a non-zero length is taken as the answer to a HEAD);
//   - responses() counts them, and only the last may say "Connection: close", which it says
//     exactly when should_close() is true;
//   - once should_close() is true, further feeds produce nothing;
//   - the split does not matter: feeding the input whole or in pieces gives the same responses
//     (Date headers aside, since a second may pass in between).

#include "http_session.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using skein_samples::http::HttpSession;

namespace {

[[noreturn]] void fail(const char* what, std::string_view output) {
  std::fprintf(stderr, "invariant broken: %s\noutput (%zu bytes):\n%.*s\n", what, output.size(),
               static_cast<int>(output.size()), output.data());
  std::abort();
}

// Checks the output's framing; returns the responses with their Date lines blanked, and whether
// the last one says "Connection: close".
std::string check_framing(std::string_view out, std::uint64_t expected_count, bool& closes) {
  const std::string_view all = out;
  std::string normalized;
  std::uint64_t count = 0;
  closes = false;
  while (!out.empty()) {
    if (closes) fail("a response after one that closes the connection", all);
    if (!out.starts_with("HTTP/1.1 ")) fail("a response does not start with HTTP/1.1", all);
    const std::size_t end = out.find("\r\n\r\n");
    if (end == std::string_view::npos) fail("a response has no end of headers", all);
    const std::string_view head = out.substr(0, end + 2);
    out.remove_prefix(end + 4);

    std::size_t length = 0;
    int lengths = 0;
    std::string_view rest = head.substr(head.find("\r\n") + 2);
    normalized.append(head.substr(0, head.find("\r\n") + 2));
    while (!rest.empty()) {
      const std::size_t eol = rest.find("\r\n");
      const std::string_view line = rest.substr(0, eol);
      rest.remove_prefix(eol + 2);
      if (line.starts_with("Content-Length: ")) {
        ++lengths;
        const std::string digits(line.substr(16));
        if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
          fail("a Content-Length is not a number", all);
        length = std::strtoull(digits.c_str(), nullptr, 10);
      } else if (line == "Connection: close") {
        closes = true;
      } else if (line.starts_with("Date: ")) {
        if (line.size() != 6 + 29) fail("a Date header is not IMF-fixdate", all);
        continue;
      }
      normalized.append(line).append("\r\n");
    }
    if (lengths != 1) fail("a response does not have exactly one Content-Length", all);
    const bool head_response = length > 0 && (out.empty() || out.starts_with("HTTP/1.1 "));
    if (!head_response) {
      if (out.size() < length) fail("a body is shorter than its Content-Length", all);
      if (length > 0 && out.starts_with("HTTP/1.1 ")) fail("a body starts like a response", all);
      normalized.append("\r\n").append(out.substr(0, length));
      out.remove_prefix(length);
    }
    normalized.append("\n");
    ++count;
  }
  if (count != expected_count) fail("responses() differs from the responses written", all);
  return normalized;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t control = data[0];
  const char* input = reinterpret_cast<const char*>(data + 1);
  const std::size_t input_size = size - 1;

  // Small limits half the time, so the 431 and 413 paths are reached by short inputs.
  HttpSession::Limits limits;
  if (control & 0x80) {
    limits.max_header_bytes = 24 + (control & 0x3f);
    limits.max_body_bytes = control & 0x1f;
  }

  // The reference: everything in one feed.
  HttpSession whole(limits);
  whole.feed(input, input_size);
  bool whole_closes = false;
  const std::string expected = check_framing(whole.output(), whole.responses(), whole_closes);
  if (whole_closes != whole.should_close())
    fail("Connection: close disagrees with should_close()", whole.output());

  // The same bytes in pieces whose sizes come from a small generator seeded by the control byte.
  HttpSession split(limits);
  std::string out;
  std::uint32_t state = 0x9e3779b9u ^ control;
  const std::size_t max_piece = std::size_t{1} << (control & 7);
  bool closed_before = false;
  for (std::size_t at = 0; at < input_size;) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    const std::size_t piece = std::min<std::size_t>(input_size - at, 1 + state % max_piece);
    split.feed(input + at, piece);
    if (closed_before && !split.output().empty()) fail("output after should_close()", split.output());
    closed_before = split.should_close();
    out += split.output();
    split.clear_output();
    at += piece;
  }
  bool split_closes = false;
  const std::string got = check_framing(out, split.responses(), split_closes);
  if (split_closes != split.should_close()) fail("Connection: close disagrees with should_close()", out);
  if (got != expected) fail("splitting the input changed the responses", out);

  // Nothing comes out after the session decided to close.
  if (split.should_close()) {
    split.feed("GET / HTTP/1.1\r\n\r\n", 18);
    if (!split.output().empty()) fail("output after should_close()", split.output());
  }
  return 0;
}
