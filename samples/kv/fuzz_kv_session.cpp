// fuzz_kv_session.cpp: a libFuzzer target for kv_server's RESP parser and command layer
// (KvSession over a Store; scripts/fuzz builds and runs it).
//
// Input: the first byte picks the limits and how the rest is split into feeds; the rest is what a
// client sends. The store runs on a fixed clock, so the same commands give the same replies.
// Invariants checked on every input:
//   - the output is a sequence of well-formed RESP2 replies (simple strings and errors without CR
//     or LF, integers, bulk strings of their stated length, arrays of such), one per command run,
//     plus one protocol error when the session closes because of one;
//   - once should_close() is true, further feeds produce nothing;
//   - the split does not matter: the input fed whole (as one read) or in pieces (as many reads,
//     the unconsumed rest carried over as the server does) gives the same replies.
// The limits are small, so the bulk and inline limits, and APPEND's and SETRANGE's, are reached
// by short inputs and no command can build a large value.

#include "kv_session.hpp"
#include "resp.hpp"
#include "store.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

using skein_samples::kv::KvSession;
using skein_samples::kv::Limits;
using skein_samples::kv::Store;

namespace {

std::int64_t fixed_clock() {
  return 1'800'000'000'000;  // 2027 in Unix ms
}

[[noreturn]] void fail(const char* what, std::string_view output) {
  std::fprintf(stderr, "invariant broken: %s\noutput (%zu bytes):\n%.*s\n", what, output.size(),
               static_cast<int>(output.size() > 4000 ? 4000 : output.size()), output.data());
  std::abort();
}

// Parses one reply at `pos` of `out`; returns where it ends.
std::size_t check_reply(std::string_view out, std::size_t pos, int depth) {
  if (depth > 4) fail("replies nested too deep", out);
  if (pos >= out.size()) fail("a reply is cut short", out);
  const std::size_t eol = out.find("\r\n", pos);
  if (eol == std::string_view::npos) fail("a reply line has no CRLF", out);
  const std::string_view line = out.substr(pos + 1, eol - pos - 1);
  if (line.find('\r') != std::string_view::npos || line.find('\n') != std::string_view::npos)
    fail("CR or LF inside a reply line", out);
  const auto number = [&] {
    std::int64_t n = 0;
    if (!skein_samples::kv::parse_int64(line, n)) fail("a reply's number is not an integer", out);
    return n;
  };
  switch (out[pos]) {
    case '+':
    case '-':
      return eol + 2;
    case ':':
      number();
      return eol + 2;
    case '$': {
      const std::int64_t n = number();
      if (n == -1) return eol + 2;
      if (n < 0) fail("a negative bulk length other than -1", out);
      const std::size_t end = eol + 2 + static_cast<std::size_t>(n);
      if (end + 2 > out.size() || out.substr(end, 2) != "\r\n")
        fail("a bulk string not followed by CRLF", out);
      return end + 2;
    }
    case '*': {
      const std::int64_t n = number();
      if (n < 0) fail("a negative array length", out);
      std::size_t at = eol + 2;
      for (std::int64_t i = 0; i < n; ++i) at = check_reply(out, at, depth + 1);
      return at;
    }
    default:
      fail("a reply with an unknown type byte", out);
  }
}

// Checks the framing and the reply count against the session's.
void check_output(std::string_view out, const KvSession& session) {
  std::uint64_t replies = 0;
  std::size_t last = 0;
  for (std::size_t pos = 0; pos < out.size(); ++replies) {
    last = pos;
    pos = check_reply(out, pos, 0);
  }
  const bool protocol_error = replies > 0 && out.substr(last).starts_with("-ERR Protocol error: ");
  const std::uint64_t expected = session.commands() + (protocol_error && session.should_close() ? 1 : 0);
  if (replies != expected) fail("the number of replies is not the number of commands", out);
}

// Feeds `input` in pieces, as kv_server's connection loop does: the unconsumed rest of a read is
// kept and the next read appended to it. Returns every reply.
std::string run(KvSession& session, std::string_view input, std::uint8_t control, bool whole) {
  std::string buffer, out;
  std::uint32_t state = 0x9e3779b9u ^ control;
  const std::size_t max_piece = std::size_t{1} << (control & 7);
  bool closed_before = false;
  for (std::size_t at = 0; at < input.size();) {
    std::size_t piece = input.size() - at;
    if (!whole) {
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      piece = std::min<std::size_t>(piece, 1 + state % max_piece);
    }
    buffer.append(input.substr(at, piece));
    at += piece;
    for (;;) {
      const std::size_t used = session.feed(buffer);
      buffer.erase(0, used);
      const bool produced = !session.output().empty();
      if (closed_before && produced) fail("output after should_close()", session.output());
      out += session.output();
      session.clear_output();
      closed_before = session.should_close();
      if (!produced || closed_before) break;  // waits for more input, or closed
    }
    if (closed_before) break;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t control = data[0];
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  Limits limits;
  limits.max_bulk = 1 + (control >> 3) * 32;  // 1 .. 993 bytes
  limits.max_multibulk = 64;
  limits.max_inline = 256;

  Store whole_store(&fixed_clock);
  KvSession whole(whole_store, limits);
  const std::string expected = run(whole, input, control, true);
  check_output(expected, whole);

  Store split_store(&fixed_clock);
  KvSession split(split_store, limits);
  const std::string got = run(split, input, control, false);
  check_output(got, split);
  if (got != expected) fail("splitting the input changed the replies", got);

  // Nothing comes out after the session decided to close.
  if (split.should_close()) {
    split.feed("*1\r\n$4\r\nPING\r\n");
    if (!split.output().empty()) fail("output after should_close()", split.output());
  }
  return 0;
}
