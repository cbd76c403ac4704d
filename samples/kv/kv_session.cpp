// kv_session.cpp: KvSession, the command dispatch of samples/kv_server (see the header). The
// argument checks and messages follow Redis 7.0's src/t_string.c, src/expire.c, src/db.c and
// src/server.c, in the same order, so that a bad command gets the error Redis would give.

#include "kv_session.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace skein_samples::kv {

namespace {

enum class Cmd {
  get,
  set,
  ping,
  echo,
  del,
  exists,
  incr,
  decr,
  incrby,
  decrby,
  mget,
  mset,
  expire,
  pexpire,
  ttl,
  pttl,
  persist,
  dbsize,
  flushall,
  flushdb,
  select,
  quit,
  command,
  config,
  getex,
  getdel,
  getset,
  setnx,
  setex,
  psetex,
  incrbyfloat,
  append,
  strlen,
  getrange,
  setrange,
  msetnx,
  keys,
  scan,
  rename,
  renamenx,
  copy,
  randomkey,
  type,
  expireat,
  pexpireat,
  expiretime,
  pexpiretime,
  hello,
  info,
};

struct CommandInfo {
  std::string_view name;  // lower case, as Redis names it in errors
  int arity;              // argument count with the name: exactly n, or at least -n
  Cmd cmd;
};

constexpr CommandInfo kCommands[] = {
    {"get", 2, Cmd::get},
    {"set", -3, Cmd::set},
    {"ping", -1, Cmd::ping},
    {"echo", 2, Cmd::echo},
    {"del", -2, Cmd::del},
    {"exists", -2, Cmd::exists},
    {"incr", 2, Cmd::incr},
    {"decr", 2, Cmd::decr},
    {"incrby", 3, Cmd::incrby},
    {"decrby", 3, Cmd::decrby},
    {"mget", -2, Cmd::mget},
    {"mset", -3, Cmd::mset},
    {"expire", -3, Cmd::expire},
    {"pexpire", -3, Cmd::pexpire},
    {"ttl", 2, Cmd::ttl},
    {"pttl", 2, Cmd::pttl},
    {"persist", 2, Cmd::persist},
    {"dbsize", 1, Cmd::dbsize},
    {"flushall", -1, Cmd::flushall},
    {"flushdb", -1, Cmd::flushdb},
    {"select", 2, Cmd::select},
    {"quit", -1, Cmd::quit},
    {"command", -1, Cmd::command},
    {"config", -2, Cmd::config},
    {"getex", -2, Cmd::getex},
    {"getdel", 2, Cmd::getdel},
    {"getset", 3, Cmd::getset},
    {"setnx", 3, Cmd::setnx},
    {"setex", 4, Cmd::setex},
    {"psetex", 4, Cmd::psetex},
    {"incrbyfloat", 3, Cmd::incrbyfloat},
    {"append", 3, Cmd::append},
    {"strlen", 2, Cmd::strlen},
    {"getrange", 4, Cmd::getrange},
    {"setrange", 4, Cmd::setrange},
    {"msetnx", -3, Cmd::msetnx},
    {"keys", 2, Cmd::keys},
    {"scan", -2, Cmd::scan},
    {"rename", 3, Cmd::rename},
    {"renamenx", 3, Cmd::renamenx},
    {"copy", -3, Cmd::copy},
    {"randomkey", 1, Cmd::randomkey},
    {"type", 2, Cmd::type},
    {"expireat", -3, Cmd::expireat},
    {"pexpireat", -3, Cmd::pexpireat},
    {"expiretime", 2, Cmd::expiretime},
    {"pexpiretime", 2, Cmd::pexpiretime},
    {"hello", -1, Cmd::hello},
    {"info", -1, Cmd::info},
};

constexpr std::string_view kNotInteger = "ERR value is not an integer or out of range";
constexpr std::string_view kSyntaxError = "ERR syntax error";
constexpr std::string_view kIntRange =
    "ERR value is out of range, value must between -2147483648 and 2147483647";
constexpr std::string_view kTooBig = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

// What HELLO and INFO say the server is: the Redis version whose commands it follows.
constexpr std::string_view kServerName = "kv_server";
constexpr std::string_view kServerVersion = "7.0.0";

// Redis's string2ld: the whole text (under 5 KiB, no leading blank) read by strtold, which also
// takes hex, "inf" and exponents; NaN and an overflow to infinity are refused.
bool parse_long_double(std::string_view text, long double& value) {
  char buf[5 * 1024];
  if (text.empty() || text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  char* end = nullptr;
  errno = 0;
  const long double v = std::strtold(buf, &end);
  if (std::isspace(static_cast<unsigned char>(buf[0])) || end != buf + text.size() ||
      (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL || std::fpclassify(v) == FP_ZERO)) ||
      errno == EINVAL || std::isnan(v))
    return false;
  value = v;
  return true;
}

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// What C code sees of an argument: the bytes before the first NUL. Redis compares options with
// strcasecmp and echoes arguments in errors with %s, both of which stop there.
std::string_view c_str(std::string_view a) {
  return a.substr(0, a.find('\0'));
}

// strcasecmp(a, lower_b) == 0.
bool equals_ci(std::string_view a, std::string_view lower_b) {
  a = c_str(a);
  if (a.size() != lower_b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower_b[i]) return false;
  return true;
}

const CommandInfo* lookup(std::string_view name) {
  constexpr std::size_t kLongest = 16;
  if (name.size() > kLongest) return nullptr;
  std::array<char, kLongest> buf;
  for (std::size_t i = 0; i < name.size(); ++i) buf[i] = lower(name[i]);
  const std::string_view lowered(buf.data(), name.size());
  for (const CommandInfo& info : kCommands)
    if (info.name == lowered) return &info;
  return nullptr;
}

}  // namespace

KvSession::KvSession(Store& store, Limits limits)
    : store_(store), parser_(limits), id_(store.next_client_id()), max_string_(limits.max_bulk) {}

std::size_t KvSession::feed(std::string_view input) {
  std::size_t used = 0;
  while (!closing_ && out_.size() < kOutputBatch) {
    switch (parser_.parse(input.substr(used))) {
      case RespParser::Status::incomplete:
        return used;
      case RespParser::Status::skip:
        used += parser_.consumed();
        break;
      case RespParser::Status::error:
        error("ERR " + std::string(parser_.error()));
        closing_ = true;
        return used;
      case RespParser::Status::command:
        execute(parser_.args());
        ++commands_;
        used += parser_.consumed();
        break;
    }
  }
  return used;
}

void KvSession::unknown_command(std::span<const std::string_view> args) {
  // "unknown command '%.128s', with args beginning with: " and then "'%.*s' " per argument while
  // the list is under 128 characters, each cut to what is left of those 128 (and, being printed
  // with %s, at its first NUL).
  std::string message = "ERR unknown command '";
  message.append(c_str(args[0]).substr(0, 128)).append("', with args beginning with: ");
  std::string list;
  for (std::size_t i = 1; i < args.size() && list.size() < 128; ++i) {
    const std::string_view shown = c_str(args[i]).substr(0, 128 - list.size());
    list.append("'").append(shown).append("' ");
  }
  message += list;
  error(message);
}

void KvSession::wrong_arity(std::string_view name) {
  std::string message = "ERR wrong number of arguments for '";
  message.append(name).append("' command");
  error(message);
}

void KvSession::execute(std::span<const std::string_view> args) {
  const CommandInfo* info = lookup(args[0]);
  if (!info) {
    unknown_command(args);
    return;
  }
  const auto argc = static_cast<int>(std::min<std::size_t>(args.size(), 1 << 30));
  if ((info->arity > 0 && argc != info->arity) || (info->arity < 0 && argc < -info->arity)) {
    wrong_arity(info->name);
    return;
  }
  switch (info->cmd) {
    case Cmd::get:
      if (!store_.get(args[1], [this](std::string_view value) { append_bulk(out_, value); }))
        append_null(out_);
      return;
    case Cmd::set:
      cmd_set(args);
      return;
    case Cmd::ping:
      if (argc > 2) return wrong_arity(info->name);
      if (argc == 2) return append_bulk(out_, args[1]);
      return append_simple(out_, "PONG");
    case Cmd::echo:
      return append_bulk(out_, args[1]);
    case Cmd::del:
      return append_integer(out_, static_cast<std::int64_t>(store_.del(args.subspan(1))));
    case Cmd::exists:
      return append_integer(out_, static_cast<std::int64_t>(store_.exists(args.subspan(1))));
    case Cmd::incr:
      return cmd_incr(args[1], 1);
    case Cmd::decr:
      return cmd_incr(args[1], -1);
    case Cmd::incrby:
    case Cmd::decrby: {
      std::int64_t delta = 0;
      if (!parse_int64(args[2], delta)) return error(kNotInteger);
      if (info->cmd == Cmd::decrby) {
        if (delta == INT64_MIN) return error("ERR decrement would overflow");
        delta = -delta;
      }
      return cmd_incr(args[1], delta);
    }
    case Cmd::mget:
      append_array_header(out_, args.size() - 1);
      store_.mget(args.subspan(1), [this](std::size_t, std::optional<std::string_view> value) {
        if (value) {
          append_bulk(out_, *value);
        } else {
          append_null(out_);
        }
      });
      return;
    case Cmd::mset:
      if (args.size() % 2 == 0) return wrong_arity(info->name);
      store_.mset(args.subspan(1));
      return append_simple(out_, "OK");
    case Cmd::expire:
      return cmd_expire(args, info->name, false, false);
    case Cmd::pexpire:
      return cmd_expire(args, info->name, true, false);
    case Cmd::expireat:
      return cmd_expire(args, info->name, false, true);
    case Cmd::pexpireat:
      return cmd_expire(args, info->name, true, true);
    case Cmd::ttl:
    case Cmd::pttl: {
      const std::int64_t ms = store_.ttl_ms(args[1]);
      return append_integer(out_, ms < 0 || info->cmd == Cmd::pttl ? ms : (ms + 500) / 1000);
    }
    case Cmd::persist:
      return append_integer(out_, store_.persist(args[1]) ? 1 : 0);
    case Cmd::dbsize:
      return append_integer(out_, static_cast<std::int64_t>(store_.size()));
    case Cmd::flushall:
    case Cmd::flushdb:
      return cmd_flush(args);
    case Cmd::select: {
      std::int64_t index = 0;
      if (!parse_int64(args[1], index)) return error(kNotInteger);
      if (index < INT32_MIN || index > INT32_MAX) return error(kIntRange);
      if (index != 0) return error("ERR DB index is out of range");
      return append_simple(out_, "OK");
    }
    case Cmd::quit:
      closing_ = true;
      return append_simple(out_, "OK");
    case Cmd::command:
      return append_array_header(out_, 0);
    case Cmd::config:
      return cmd_config(args);
    case Cmd::getex:
      return cmd_getex(args);
    case Cmd::getdel:
      return store_.update(args[1], [this](Store::Slot& slot) {
        if (!slot.exists()) return append_null(out_);
        append_bulk(out_, slot.value());
        slot.erase();
      });
    case Cmd::getset:
      return store_.update(args[1], [&](Store::Slot& slot) {
        if (slot.exists()) {
          append_bulk(out_, slot.value());
        } else {
          append_null(out_);
        }
        slot.set_value(args[2]);
        slot.set_deadline(0);
      });
    case Cmd::setnx: {
      Store::SetOptions options;
      options.condition = Store::Condition::if_absent;
      return append_integer(out_, store_.set(args[1], args[2], options) ? 1 : 0);
    }
    case Cmd::setex:
    case Cmd::psetex: {
      std::int64_t at = 0;
      if (!expire_time(args[2], info->cmd == Cmd::setex ? 's' : 'p', info->name, at)) return;
      Store::SetOptions options;
      options.expires_at = at;
      store_.set(args[1], args[3], options);
      return append_simple(out_, "OK");
    }
    case Cmd::incrbyfloat:
      return cmd_incrbyfloat(args[1], args[2]);
    case Cmd::append:
      return store_.update(args[1], [&](Store::Slot& slot) {
        if (!slot.exists()) {
          slot.set_value(args[2]);
        } else {
          if (slot.value().size() + args[2].size() > max_string_) return error(kTooBig);
          slot.value_ref().append(args[2]);
        }
        append_integer(out_, static_cast<std::int64_t>(slot.value().size()));
      });
    case Cmd::strlen:
      return store_.update(args[1], [this](Store::Slot& slot) {
        append_integer(out_, slot.exists() ? static_cast<std::int64_t>(slot.value().size()) : 0);
      });
    case Cmd::getrange:
      return cmd_getrange(args);
    case Cmd::setrange:
      return cmd_setrange(args);
    case Cmd::msetnx:
      if (args.size() % 2 == 0) return wrong_arity(info->name);
      return append_integer(out_, store_.msetnx(args.subspan(1)) ? 1 : 0);
    case Cmd::keys: {
      std::vector<std::string> found;
      store_.keys(args[1], [&](std::string_view key) { found.emplace_back(key); });
      append_array_header(out_, found.size());
      for (const std::string& key : found) append_bulk(out_, key);
      return;
    }
    case Cmd::scan:
      return cmd_scan(args);
    case Cmd::rename:
    case Cmd::renamenx:
      switch (store_.rename(args[1], args[2], info->cmd == Cmd::renamenx)) {
        case Store::RenameResult::no_such_key:
          return error("ERR no such key");
        case Store::RenameResult::target_exists:
          return append_integer(out_, 0);
        case Store::RenameResult::ok:
          return info->cmd == Cmd::renamenx ? append_integer(out_, 1) : append_simple(out_, "OK");
      }
      return;
    case Cmd::copy:
      return cmd_copy(args);
    case Cmd::randomkey: {
      std::string key;
      if (!store_.random_key(key)) return append_null(out_);
      return append_bulk(out_, key);
    }
    case Cmd::type:
      return append_simple(out_, store_.exists(args.subspan(1, 1)) ? "string" : "none");
    case Cmd::expiretime:
    case Cmd::pexpiretime: {
      const std::int64_t at = store_.update(args[1], [](Store::Slot& slot) -> std::int64_t {
        if (!slot.exists()) return -2;
        return slot.deadline() == 0 ? -1 : slot.deadline();
      });
      return append_integer(out_, at < 0 || info->cmd == Cmd::pexpiretime ? at : (at + 500) / 1000);
    }
    case Cmd::hello:
      return cmd_hello(args);
    case Cmd::info:
      return cmd_info(args);
  }
}

// Redis's getExpireMillisecondsOrReply: `text` in seconds ('s'), milliseconds ('p'), Unix seconds
// ('S') or Unix milliseconds ('P'), to a deadline in Unix ms in `at`; false after an error reply.
bool KvSession::expire_time(std::string_view text, char unit, std::string_view command, std::int64_t& at) {
  std::int64_t ms = 0;
  if (!parse_int64(text, ms)) {
    error(kNotInteger);
    return false;
  }
  const bool seconds = unit == 's' || unit == 'S';
  bool ok = ms > 0 && !(seconds && ms > INT64_MAX / 1000);
  if (ok && seconds) ms *= 1000;
  if (ok && (unit == 's' || unit == 'p')) ok = !__builtin_add_overflow(ms, store_.now(), &ms);
  if (!ok) {
    std::string message = "ERR invalid expire time in '";
    message.append(command).append("' command");
    error(message);
    return false;
  }
  at = ms;
  return true;
}

namespace {

// The options of SET and GETEX, parsed as Redis 7.0's parseExtendedStringArgumentsOrReply does.
struct ExtendedOptions {
  bool nx = false, xx = false, get = false, keep_ttl = false, persist = false;
  char unit = 0;  // 0: no expiry; 's' EX, 'p' PX, 'S' EXAT, 'P' PXAT (as KvSession::expire_time)
  std::string_view expire;
};

// False on a syntax error: an option that conflicts with an earlier one, one the command does not
// take, EX/PX/EXAT/PXAT without a value. A repeated EX (or PX, ...) takes the last value.
bool parse_extended(std::span<const std::string_view> args, bool getex, ExtendedOptions& o) {
  for (std::size_t j = getex ? 2 : 3; j < args.size(); ++j) {
    const std::string_view opt = args[j];
    const bool has_next = j + 1 < args.size();
    const auto expiry = [&](char unit) {
      if (!has_next || o.keep_ttl || o.persist || (o.unit != 0 && o.unit != unit)) return false;
      o.unit = unit;
      o.expire = args[++j];
      return true;
    };
    if (equals_ci(opt, "nx") && !o.xx && !getex) {
      o.nx = true;
    } else if (equals_ci(opt, "xx") && !o.nx && !getex) {
      o.xx = true;
    } else if (equals_ci(opt, "get") && !getex) {
      o.get = true;
    } else if (equals_ci(opt, "keepttl") && !o.persist && o.unit == 0 && !getex) {
      o.keep_ttl = true;
    } else if (equals_ci(opt, "persist") && getex && o.unit == 0 && !o.keep_ttl) {
      o.persist = true;
    } else if (equals_ci(opt, "ex")) {
      if (!expiry('s')) return false;
    } else if (equals_ci(opt, "px")) {
      if (!expiry('p')) return false;
    } else if (equals_ci(opt, "exat")) {
      if (!expiry('S')) return false;
    } else if (equals_ci(opt, "pxat")) {
      if (!expiry('P')) return false;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

// SET key value [NX|XX] [GET] [EX seconds|PX ms|EXAT unix-seconds|PXAT unix-ms|KEEPTTL], as
// Redis 7.0's setCommand: options, then the expiry's number, then the key.
void KvSession::cmd_set(std::span<const std::string_view> args) {
  ExtendedOptions o;
  if (!parse_extended(args, false, o)) return error(kSyntaxError);
  std::int64_t expires_at = 0;
  if (o.unit != 0 && !expire_time(o.expire, o.unit, "set", expires_at)) return;
  Store::SetOptions options;
  options.condition = o.nx   ? Store::Condition::if_absent
                      : o.xx ? Store::Condition::if_present
                             : Store::Condition::always;
  options.expires_at = expires_at;
  options.keep_ttl = o.keep_ttl;
  std::function<void(std::optional<std::string_view>)> old_value;
  if (o.get) {
    old_value = [this](std::optional<std::string_view> v) {
      if (v) {
        append_bulk(out_, *v);
      } else {
        append_null(out_);
      }
    };
    options.old_value = &old_value;
  }
  const bool done = store_.set(args[1], args[2], options);
  if (o.get) return;  // the reply is the old value, whether or not the key was set
  if (done) {
    append_simple(out_, "OK");
  } else {
    append_null(out_);
  }
}

// GETEX key [EX seconds|PX ms|EXAT unix-seconds|PXAT unix-ms|PERSIST]: a missing key is nil before
// the expiry's number is looked at, as in Redis.
void KvSession::cmd_getex(std::span<const std::string_view> args) {
  ExtendedOptions o;
  if (!parse_extended(args, true, o)) return error(kSyntaxError);
  store_.update(args[1], [&](Store::Slot& slot) {
    if (!slot.exists()) return append_null(out_);
    std::int64_t at = 0;
    if (o.unit != 0 && !expire_time(o.expire, o.unit, "getex", at)) return;
    append_bulk(out_, slot.value());
    if (o.unit != 0) {
      slot.set_deadline(at);  // removes the key if EXAT/PXAT named the past
    } else if (o.persist) {
      slot.set_deadline(0);
    }
  });
}

void KvSession::cmd_incr(std::string_view key, std::int64_t delta) {
  std::int64_t value = 0;
  switch (store_.incr_by(key, delta, value)) {
    case Store::IncrResult::ok:
      return append_integer(out_, value);
    case Store::IncrResult::not_integer:
      return error(kNotInteger);
    case Store::IncrResult::overflow:
      return error("ERR increment or decrement would overflow");
  }
}

// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key time [NX|XX|GT|LT ...], as Redis 7.0's
// expireGenericCommand: the options first, then the number; the overflow check is against Unix
// time (0 for the AT forms), as Redis's is.
void KvSession::cmd_expire(std::span<const std::string_view> args, std::string_view name, bool milliseconds,
                           bool absolute) {
  unsigned conditions = Store::always;
  for (std::size_t j = 3; j < args.size(); ++j) {
    if (equals_ci(args[j], "nx")) {
      conditions |= Store::nx;
    } else if (equals_ci(args[j], "xx")) {
      conditions |= Store::xx;
    } else if (equals_ci(args[j], "gt")) {
      conditions |= Store::gt;
    } else if (equals_ci(args[j], "lt")) {
      conditions |= Store::lt;
    } else {
      return error("ERR Unsupported option " + std::string(c_str(args[j])));
    }
  }
  if ((conditions & Store::nx) && (conditions & (Store::xx | Store::gt | Store::lt)))
    return error("ERR NX and XX, GT or LT options at the same time are not compatible");
  if ((conditions & Store::gt) && (conditions & Store::lt))
    return error("ERR GT and LT options at the same time are not compatible");
  std::int64_t when = 0;
  if (!parse_int64(args[2], when)) return error(kNotInteger);
  const auto invalid = [&] {
    std::string message = "ERR invalid expire time in '";
    message.append(name).append("' command");
    error(message);
  };
  if (!milliseconds) {
    if (when > INT64_MAX / 1000 || when < INT64_MIN / 1000) return invalid();
    when *= 1000;
  }
  const std::int64_t base = absolute ? 0 : store_.now();
  if (when > INT64_MAX - base) return invalid();
  when += base;
  append_integer(out_, store_.expire_at(args[1], when, conditions) ? 1 : 0);
}

// INCRBYFLOAT key increment, as Redis 7.0: both numbers read as long doubles the way its
// string2ld reads them, the sum written with "%.17Lf" and its trailing zeros removed.
void KvSession::cmd_incrbyfloat(std::string_view key, std::string_view increment) {
  store_.update(key, [&](Store::Slot& slot) {
    long double value = 0, incr = 0;
    if ((slot.exists() && !parse_long_double(slot.value(), value)) || !parse_long_double(increment, incr))
      return error("ERR value is not a valid float");
    value += incr;
    if (std::isnan(value) || std::isinf(value)) return error("ERR increment would produce NaN or Infinity");
    char buf[5 * 1024];
    int n = std::snprintf(buf, sizeof buf, "%.17Lf", value);
    if (n < 0 || static_cast<std::size_t>(n) + 1 > sizeof buf) return error("ERR value is not a valid float");
    auto len = static_cast<std::size_t>(n);
    if (std::memchr(buf, '.', len)) {
      while (buf[len - 1] == '0') --len;
      if (buf[len - 1] == '.') --len;
    }
    if (len == 2 && buf[0] == '-' && buf[1] == '0') {
      buf[0] = '0';
      len = 1;
    }
    slot.set_value(std::string_view(buf, len));
    append_bulk(out_, std::string_view(buf, len));
  });
}

// GETRANGE key start end: negative indexes count from the end; out-of-range ones are clamped.
void KvSession::cmd_getrange(std::span<const std::string_view> args) {
  std::int64_t start = 0, end = 0;
  if (!parse_int64(args[2], start) || !parse_int64(args[3], end)) return error(kNotInteger);
  store_.update(args[1], [&](Store::Slot& slot) {
    const std::string_view value = slot.exists() ? slot.value() : std::string_view();
    const auto size = static_cast<std::int64_t>(value.size());
    if (start < 0 && end < 0 && start > end) return append_bulk(out_, "");
    if (start < 0) start += size;
    if (end < 0) end += size;
    start = std::max<std::int64_t>(start, 0);
    end = std::max<std::int64_t>(end, 0);
    if (end >= size) end = size - 1;
    if (start > end || size == 0) return append_bulk(out_, "");
    append_bulk(out_,
                value.substr(static_cast<std::size_t>(start), static_cast<std::size_t>(end - start + 1)));
  });
}

// SETRANGE key offset value: zero bytes fill the gap; the result may not pass the bulk limit.
void KvSession::cmd_setrange(std::span<const std::string_view> args) {
  std::int64_t offset = 0;
  if (!parse_int64(args[2], offset)) return error(kNotInteger);
  if (offset < 0) return error("ERR offset is out of range");
  const std::string_view value = args[3];
  store_.update(args[1], [&](Store::Slot& slot) {
    if (value.empty())
      return append_integer(out_, slot.exists() ? static_cast<std::int64_t>(slot.value().size()) : 0);
    if (static_cast<std::uint64_t>(offset) > max_string_ || value.size() > max_string_ - offset)
      return error(kTooBig);
    if (!slot.exists()) slot.set_value("");
    std::string& target = slot.value_ref();
    const std::size_t at = static_cast<std::size_t>(offset);
    if (target.size() < at + value.size()) target.resize(at + value.size(), '\0');
    target.replace(at, value.size(), value);
    append_integer(out_, static_cast<std::int64_t>(target.size()));
  });
}

// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. The cursor is Store::scan's (see there),
// not Redis's, but the contract is the same: from 0 back to 0, every key present all along is
// returned (exactly once here, while the keyspace does not change).
void KvSession::cmd_scan(std::span<const std::string_view> args) {
  // Redis reads the cursor with strtoul: a sign, leading zeros and "" (zero) pass; blanks first,
  // trailing bytes and overflow do not.
  const std::string text(c_str(args[1]));
  char* end = nullptr;
  errno = 0;
  const unsigned long long cursor = std::strtoull(text.c_str(), &end, 10);
  if ((!text.empty() && std::isspace(static_cast<unsigned char>(text[0]))) || *end != '\0' || errno == ERANGE)
    return error("ERR invalid cursor");
  std::int64_t count = 10;
  std::string_view pattern = "*", type;
  bool typed = false;
  for (std::size_t i = 2; i < args.size(); i += 2) {
    const bool has_value = i + 1 < args.size();
    if (equals_ci(args[i], "count") && has_value) {
      if (!parse_int64(args[i + 1], count)) return error(kNotInteger);
      if (count < 1) return error(kSyntaxError);
    } else if (equals_ci(args[i], "match") && has_value) {
      pattern = args[i + 1];
    } else if (equals_ci(args[i], "type") && has_value) {
      type = args[i + 1];
      typed = true;
    } else {
      return error(kSyntaxError);
    }
  }
  std::vector<std::string> found;
  const std::uint64_t next = store_.scan(cursor, static_cast<std::size_t>(count),
                                         [&](std::string_view key) { found.emplace_back(key); });
  const bool all = pattern == "*";
  std::erase_if(found, [&](const std::string& key) {
    return (!all && !glob_match(pattern, key)) || (typed && !equals_ci(type, "string"));
  });
  append_array_header(out_, 2);
  char buf[24];
  append_bulk(out_, std::string_view(
                        buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, next).ptr - buf)));
  append_array_header(out_, found.size());
  for (const std::string& key : found) append_bulk(out_, key);
}

// COPY source destination [DB index] [REPLACE]; there is only database 0.
void KvSession::cmd_copy(std::span<const std::string_view> args) {
  bool replace = false;
  for (std::size_t j = 3; j < args.size(); ++j) {
    if (equals_ci(args[j], "replace")) {
      replace = true;
    } else if (equals_ci(args[j], "db") && j + 1 < args.size()) {
      std::int64_t db = 0;
      if (!parse_int64(args[++j], db)) return error(kNotInteger);
      if (db < INT32_MIN || db > INT32_MAX) return error(kIntRange);
      if (db != 0) return error("ERR DB index is out of range");
    } else {
      return error(kSyntaxError);
    }
  }
  if (args[1] == args[2]) return error("ERR source and destination objects are the same");
  append_integer(out_, store_.copy(args[1], args[2], replace) ? 1 : 0);
}

// HELLO [protover [AUTH username password] [SETNAME clientname]]: protocol 2 only (RESP3's 3
// gets NOPROTO as an unsupported version would). There are no users: AUTH succeeds for "default"
// with any password, as Redis's passwordless default user does, and fails for any other name.
void KvSession::cmd_hello(std::span<const std::string_view> args) {
  if (args.size() >= 2) {
    std::int64_t version = 0;
    if (!parse_int64(args[1], version))
      return error("ERR Protocol version is not an integer or out of range");
    if (version != 2) return error("NOPROTO unsupported protocol version");
  }
  bool wrong_user = false;
  for (std::size_t j = 2; j < args.size(); ++j) {
    const std::size_t more = args.size() - 1 - j;
    if (equals_ci(args[j], "auth") && more >= 2) {
      wrong_user = wrong_user || args[j + 1] != "default";
      j += 2;
    } else if (equals_ci(args[j], "setname") && more >= 1) {
      for (const char c : args[j + 1])
        if (c < '!' || c > '~')
          return error("ERR Client names cannot contain spaces, newlines or special characters.");
      j += 1;
    } else {
      return error("ERR Syntax error in HELLO option '" + std::string(c_str(args[j])) + "'");
    }
  }
  if (wrong_user) return error("WRONGPASS invalid username-password pair or user is disabled.");
  append_array_header(out_, 14);
  append_bulk(out_, "server");
  append_bulk(out_, kServerName);
  append_bulk(out_, "version");
  append_bulk(out_, kServerVersion);
  append_bulk(out_, "proto");
  append_integer(out_, 2);
  append_bulk(out_, "id");
  append_integer(out_, static_cast<std::int64_t>(id_));
  append_bulk(out_, "mode");
  append_bulk(out_, "standalone");
  append_bulk(out_, "role");
  append_bulk(out_, "master");
  append_bulk(out_, "modules");
  append_array_header(out_, 0);
}

// INFO [section ...]: the Server and Keyspace sections, in Redis's format, with a few fields each.
void KvSession::cmd_info(std::span<const std::string_view> args) {
  bool server = args.size() == 1, keyspace = args.size() == 1;
  for (const std::string_view section : args.subspan(1)) {
    const bool every =
        equals_ci(section, "all") || equals_ci(section, "everything") || equals_ci(section, "default");
    server = server || every || equals_ci(section, "server");
    keyspace = keyspace || every || equals_ci(section, "keyspace");
  }
  std::string text;
  if (server) {
    const std::int64_t uptime = store_.uptime_ms() / 1000;
    text.append("# Server\r\nredis_version:").append(kServerVersion);
    text.append("\r\nredis_mode:standalone\r\narch_bits:64\r\nprocess_id:").append(std::to_string(getpid()));
    text.append("\r\nuptime_in_seconds:").append(std::to_string(uptime));
    text.append("\r\nuptime_in_days:").append(std::to_string(uptime / 86400)).append("\r\n");
  }
  if (keyspace) {
    if (!text.empty()) text.append("\r\n");
    text.append("# Keyspace\r\n");
    if (const std::size_t keys = store_.size(); keys > 0) {
      text.append("db0:keys=").append(std::to_string(keys));
      text.append(",expires=").append(std::to_string(std::min(keys, store_.with_deadline())));
      text.append(",avg_ttl=0\r\n");
    }
  }
  append_bulk(out_, text);
}

void KvSession::cmd_flush(std::span<const std::string_view> args) {
  if (args.size() > 2 || (args.size() == 2 && !equals_ci(args[1], "async") && !equals_ci(args[1], "sync")))
    return error(kSyntaxError);
  store_.clear();
  append_simple(out_, "OK");
}

// CONFIG GET with the two parameters redis-benchmark reads at start-up (persistence is off: there
// is none); other parameters are simply absent from the reply, as unknown ones are in Redis.
void KvSession::cmd_config(std::span<const std::string_view> args) {
  if (!equals_ci(args[1], "get")) {
    std::string message = "ERR unknown subcommand '";
    message.append(c_str(args[1]).substr(0, 128)).append("'. Try CONFIG HELP.");
    return error(message);
  }
  if (args.size() < 3) return wrong_arity("config|get");
  static constexpr std::pair<std::string_view, std::string_view> kParameters[] = {{"save", ""},
                                                                                  {"appendonly", "no"}};
  // (Not a structured binding captured by the lambda: clang before 16 refuses that.)
  const auto asked = [&](std::string_view name) {
    return std::any_of(args.begin() + 2, args.end(), [&](std::string_view a) { return equals_ci(a, name); });
  };
  std::size_t found = 0;
  for (const auto& parameter : kParameters)
    if (asked(parameter.first)) ++found;
  append_array_header(out_, 2 * found);
  for (const auto& parameter : kParameters) {
    if (asked(parameter.first)) {
      append_bulk(out_, parameter.first);
      append_bulk(out_, parameter.second);
    }
  }
}

}  // namespace skein_samples::kv
