// kv_session.hpp: one connection of samples/kv_server as pure logic, with no I/O. Bytes from the
// peer go in through feed(), in pieces of any size; reply bytes come out of output(), and
// should_close() says whether to close the connection once they are written. Commands run against
// a Store shared by every session (see store.hpp for why that is safe across worker threads).
//
// The commands, with Redis 7's arguments, replies and error messages (so redis-cli prints the same
// as against redis-server):
//
//   PING [message]                 ECHO message                 QUIT
//   SET key value [NX|XX] [GET] [EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]
//   SETNX key value   SETEX key seconds value   PSETEX key ms value   GETSET key value
//   GET key   GETDEL key   GETEX key [EX s|PX ms|EXAT unix-s|PXAT unix-ms|PERSIST]
//   MGET key [key ...]             MSET key value [key value ...]   MSETNX key value [...]
//   APPEND key value   STRLEN key   GETRANGE key start end   SETRANGE key offset value
//   DEL key [key ...]              EXISTS key [key ...]          TYPE key
//   INCR key  DECR key  INCRBY key delta  DECRBY key delta  INCRBYFLOAT key increment
//   EXPIRE key seconds [NX|XX|GT|LT]  PEXPIRE key ms [...]  EXPIREAT key unix-s [...]
//   PEXPIREAT key unix-ms [...]    PERSIST key
//   TTL key  PTTL key  EXPIRETIME key  PEXPIRETIME key   (-2: no such key, -1: no deadline)
//   KEYS pattern   SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]   RANDOMKEY
//   RENAME key newkey   RENAMENX key newkey   COPY source destination [DB 0] [REPLACE]
//   DBSIZE   FLUSHALL [ASYNC|SYNC]   FLUSHDB [ASYNC|SYNC]   SELECT 0
//   HELLO [2 [AUTH default password] [SETNAME name]]      INFO [section ...]
//   COMMAND ...                    (an empty array: redis-cli's interactive mode asks for docs)
//   CONFIG GET parameter ...       (save "" and appendonly "no", which redis-benchmark asks for)
//
// Names are case-insensitive. Errors are Redis's: "ERR unknown command 'x', with args beginning
// with: ...", "ERR wrong number of arguments for 'x' command", "ERR syntax error", "ERR value is
// not an integer or out of range", "ERR increment or decrement would overflow", "ERR invalid
// expire time in 'set' command", ... A command error is only a reply: the session goes on. A
// protocol error (see resp.hpp) gets "-ERR Protocol error: ..." and closes the connection, as
// Redis does. Every key holds a string: there is only one type, so no WRONGTYPE; there is one
// database (SELECT accepts only 0).
//
// Pipelining: feed() runs every complete command it is given and appends all their replies to one
// output buffer, so a connection writes once per read however many commands arrived together.
// Buffers are reused: once they have grown, a session allocates nothing per command except for
// what the store keeps (a new key, a longer value).
#pragma once

#include "resp.hpp"
#include "store.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace skein_samples::kv {

class KvSession {
 public:
  // feed() stops once output() holds this much, so the caller can write it before going on.
  static constexpr std::size_t kOutputBatch = 1024 * 1024;

  // `limits.max_bulk` is also the longest string APPEND and SETRANGE may make (Redis's
  // proto-max-bulk-len serves both).
  explicit KvSession(Store& store, Limits limits = {});
  KvSession(const KvSession&) = delete;
  KvSession& operator=(const KvSession&) = delete;

  // Runs the complete commands at the front of `input` and appends their replies to output();
  // returns how many bytes of `input` they took. The rest (a partial command) must be passed
  // again, with more bytes after it, on the next call. Also returns early when output() reaches
  // kOutputBatch or the session closes; then call again with the rest once output() is written.
  std::size_t feed(std::string_view input);

  // The reply bytes produced so far and not yet taken.
  std::string_view output() const noexcept { return out_; }
  // Forgets output() (after the caller wrote it); the buffer keeps its capacity.
  void clear_output() noexcept { out_.clear(); }
  // Forgets output() and gives back its memory if a big reply grew it past `keep` bytes.
  void release_output(std::size_t keep) {
    if (out_.capacity() > keep) std::string().swap(out_);
    out_.clear();
  }

  // True once the connection should close after output() has been written (QUIT, a protocol
  // error).
  bool should_close() const noexcept { return closing_; }
  // While a command is incomplete: how many bytes the input must hold for it to move on.
  std::size_t wanted() const noexcept { return parser_.wanted(); }
  // Commands run so far (each gets exactly one reply).
  std::uint64_t commands() const noexcept { return commands_; }

 private:
  void execute(std::span<const std::string_view> args);
  void error(std::string_view message) { append_error(out_, message); }
  void unknown_command(std::span<const std::string_view> args);
  void wrong_arity(std::string_view name);

  bool expire_time(std::string_view text, char unit, std::string_view command, std::int64_t& at);

  void cmd_set(std::span<const std::string_view> args);
  void cmd_getex(std::span<const std::string_view> args);
  void cmd_incr(std::string_view key, std::int64_t delta);
  void cmd_incrbyfloat(std::string_view key, std::string_view increment);
  void cmd_getrange(std::span<const std::string_view> args);
  void cmd_setrange(std::span<const std::string_view> args);
  void cmd_scan(std::span<const std::string_view> args);
  void cmd_copy(std::span<const std::string_view> args);
  void cmd_hello(std::span<const std::string_view> args);
  void cmd_info(std::span<const std::string_view> args);
  void cmd_expire(std::span<const std::string_view> args, std::string_view name, bool milliseconds,
                  bool absolute);
  void cmd_flush(std::span<const std::string_view> args);
  void cmd_config(std::span<const std::string_view> args);

  Store& store_;
  RespParser parser_;
  std::string out_;
  std::uint64_t commands_ = 0;
  std::uint64_t id_;        // HELLO's client id, unique in the process
  std::size_t max_string_;  // the longest value APPEND and SETRANGE may make
  bool closing_ = false;
};

}  // namespace skein_samples::kv
