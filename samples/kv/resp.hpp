// resp.hpp: the RESP2 wire format of samples/kv_server as pure logic, with no I/O: a request parser
// that can be fed a command in pieces of any size, and the reply writers.
//
// Requests are what redis-cli and redis-benchmark send, and what Redis itself accepts:
//
//   *2\r\n$3\r\nGET\r\n$3\r\nkey\r\n    a multibulk: an array of bulk strings (binary-safe)
//   GET key\r\n                         an inline command, as typed into telnet: words split on
//                                       space, \t, \r, \n, "double" (with \n \r \t \b \a \\ \" \xHH
//                                       escapes) and 'single' quotes as Redis's sdssplitargs
//                                       does; a NUL before the '\n' keeps the line from ending
//
// Errors and limits are Redis 7's (src/networking.c), with the same messages, all of them fatal to
// the connection: a multibulk count that is not a number or is over Limits::max_multibulk
// ("invalid multibulk length"), a bulk length that is negative, not a number or over
// Limits::max_bulk ("invalid bulk length"), an element that is not a bulk string ("expected '$',
// got 'X'"), a header line or inline request longer than Limits::max_inline without its line end
// ("too big mbulk count string", "too big bulk count string", "too big inline request"),
// unbalanced quotes. Where Redis merely skips the two bytes after a bulk string's data, this parser
// insists they are \r\n ("expected CRLF after bulk"). Claimed sizes are checked against the limits
// before anything is reserved, so a huge count or length never allocates: memory grows only with
// the bytes that actually arrive. A multibulk count of 0 or less and an empty inline line are
// skipped without a reply, as Redis does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace skein_samples::kv {

struct Limits {
  std::size_t max_bulk = 512 * 1024 * 1024;  // bytes in one argument: Redis's proto-max-bulk-len
  std::size_t max_multibulk = 1024 * 1024;   // arguments in one command
  std::size_t max_inline = 64 * 1024;        // bytes in one header line or inline request
};

class RespParser {
 public:
  enum class Status {
    incomplete,  // more bytes are needed; call again with the same bytes and more after them
    command,     // a command is complete: args(), consumed()
    skip,        // consumed() bytes held no command (*0, an empty inline line): drop them
    error,       // malformed: error() says why; the connection must be closed after the reply
  };

  RespParser() : RespParser(Limits{}) {}
  explicit RespParser(Limits limits) : limits_(limits) {}

  // Parses the request at the front of `data`. After `incomplete`, the next call must pass the
  // same bytes again (they may have moved in memory) with more appended: the parser remembers
  // how far it got and does not rescan them. After any other status it starts afresh at the
  // front of the next `data`.
  Status parse(std::string_view data);

  // The arguments of the command just parsed (the name first), valid until the next parse() or
  // until the bytes passed to parse() change. Views into those bytes, except for inline commands
  // with quoted escapes, whose arguments live in the parser.
  std::span<const std::string_view> args() const noexcept { return args_; }
  // Bytes of `data` the command (or skipped request) took.
  std::size_t consumed() const noexcept { return consumed_; }
  // After Status::error: Redis's message, "Protocol error: ...", without the "ERR " prefix.
  std::string_view error() const noexcept { return error_; }
  // While incomplete: the least number of bytes `data` must hold for the parse to move on (more
  // than its size; at the start of a large bulk string, enough to hold all of it). A reader can
  // size its buffer by it.
  std::size_t wanted() const noexcept { return wanted_; }

  // Forgets a partial request.
  void reset() noexcept;

 private:
  Status parse_multibulk(std::string_view data);
  Status parse_inline(std::string_view data);
  Status fail(std::string_view message);
  Status done(std::size_t consumed);

  Limits limits_;
  // Progress through an incomplete multibulk, as offsets from the front of `data`.
  bool in_multibulk_ = false;
  std::size_t pos_ = 0;            // where parsing resumes
  std::int64_t expected_ = 0;      // arguments the multibulk header announced
  std::int64_t bulk_length_ = -1;  // of the argument being read, once its header is parsed
  std::vector<std::pair<std::size_t, std::size_t>> spans_;  // offset and length of each argument

  std::vector<std::string_view> args_;
  std::string inline_scratch_;  // unescaped inline arguments
  std::size_t consumed_ = 0;
  std::size_t wanted_ = 0;
  std::string error_;
};

// Parses a whole decimal integer as Redis's string2ll does: an optional '-', no '+', no leading
// zeros, no blanks, at most 20 characters, within int64. Returns false otherwise.
bool parse_int64(std::string_view text, std::int64_t& value) noexcept;

// Reply writers: each appends one RESP2 value to `out`.
void append_simple(std::string& out, std::string_view text);  // +text\r\n
// -text\r\n, with CR and LF trimmed off the ends of `text` and any left inside turned into blanks
// (as Redis does).
void append_error(std::string& out, std::string_view text);
void append_integer(std::string& out, std::int64_t value);      // :value\r\n
void append_bulk(std::string& out, std::string_view data);      // $len\r\ndata\r\n
void append_null(std::string& out);                             // $-1\r\n
void append_array_header(std::string& out, std::size_t count);  // *count\r\n

}  // namespace skein_samples::kv
