// kv_session.cpp: KvSession, the command dispatch of samples/kv_server (see the header). The
// argument checks and messages follow Redis 7.0's src/t_string.c, src/expire.c, src/db.c and
// src/server.c, in the same order, so that a bad command gets the error Redis would give.

#include "kv_session.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

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
};

constexpr std::string_view kNotInteger = "ERR value is not an integer or out of range";
constexpr std::string_view kSyntaxError = "ERR syntax error";

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equals_ci(std::string_view a, std::string_view lower_b) {
  if (a.size() != lower_b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower_b[i]) return false;
  return true;
}

const CommandInfo* lookup(std::string_view name) {
  constexpr std::size_t kLongest = 8;
  if (name.size() > kLongest) return nullptr;
  std::array<char, kLongest> buf;
  for (std::size_t i = 0; i < name.size(); ++i) buf[i] = lower(name[i]);
  const std::string_view lowered(buf.data(), name.size());
  for (const CommandInfo& info : kCommands)
    if (info.name == lowered) return &info;
  return nullptr;
}

}  // namespace

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
  // the list is under 128 characters, each cut to what is left of those 128.
  std::string message = "ERR unknown command '";
  message.append(args[0].substr(0, 128)).append("', with args beginning with: ");
  std::string list;
  for (std::size_t i = 1; i < args.size() && list.size() < 128; ++i) {
    const std::string_view shown = args[i].substr(0, 128 - list.size());
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
    case Cmd::pexpire:
      return cmd_expire(args, info->cmd == Cmd::pexpire);
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
      if (!parse_int64(args[1], index) || index < INT32_MIN || index > INT32_MAX) return error(kNotInteger);
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
  }
}

// SET key value [NX|XX] [GET] [EX seconds|PX milliseconds|KEEPTTL], parsed as Redis 7.0's
// parseExtendedStringArgumentsOrReply does: an option that conflicts with an earlier one, or EX/PX
// without a value, is a syntax error; a repeated EX or PX takes the last value.
void KvSession::cmd_set(std::span<const std::string_view> args) {
  bool nx = false, xx = false, get = false, keep_ttl = false, ex = false, px = false;
  std::string_view expire;
  for (std::size_t j = 3; j < args.size(); ++j) {
    const std::string_view opt = args[j];
    const bool has_next = j + 1 < args.size();
    if (equals_ci(opt, "nx") && !xx) {
      nx = true;
    } else if (equals_ci(opt, "xx") && !nx) {
      xx = true;
    } else if (equals_ci(opt, "get")) {
      get = true;
    } else if (equals_ci(opt, "keepttl") && !ex && !px) {
      keep_ttl = true;
    } else if (equals_ci(opt, "ex") && !keep_ttl && !px && has_next) {
      ex = true;
      expire = args[++j];
    } else if (equals_ci(opt, "px") && !keep_ttl && !ex && has_next) {
      px = true;
      expire = args[++j];
    } else {
      return error(kSyntaxError);
    }
  }
  std::int64_t expires_at = 0;
  if (ex || px) {
    std::int64_t ms = 0;
    if (!parse_int64(expire, ms)) return error(kNotInteger);
    if (ms <= 0 || (ex && ms > INT64_MAX / 1000)) return error("ERR invalid expire time in 'set' command");
    if (ex) ms *= 1000;
    if (__builtin_add_overflow(ms, store_.now(), &expires_at))
      return error("ERR invalid expire time in 'set' command");
  }
  Store::SetOptions options;
  options.condition = nx   ? Store::Condition::if_absent
                      : xx ? Store::Condition::if_present
                           : Store::Condition::always;
  options.expires_at = expires_at;
  options.keep_ttl = keep_ttl;
  std::function<void(std::optional<std::string_view>)> old_value;
  if (get) {
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
  if (get) return;  // the reply is the old value, whether or not the key was set
  if (done) {
    append_simple(out_, "OK");
  } else {
    append_null(out_);
  }
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

// EXPIRE/PEXPIRE key time [NX|XX|GT|LT], as Redis 7.0's expireGenericCommand.
void KvSession::cmd_expire(std::span<const std::string_view> args, bool milliseconds) {
  std::int64_t when = 0;
  if (!parse_int64(args[2], when)) return error(kNotInteger);
  bool nx = false, xx = false, gt = false, lt = false;
  for (std::size_t j = 3; j < args.size(); ++j) {
    if (equals_ci(args[j], "nx")) {
      nx = true;
    } else if (equals_ci(args[j], "xx")) {
      xx = true;
    } else if (equals_ci(args[j], "gt")) {
      gt = true;
    } else if (equals_ci(args[j], "lt")) {
      lt = true;
    } else {
      return error("ERR Unsupported option " + std::string(args[j]));
    }
  }
  if (nx && (xx || gt || lt))
    return error("ERR NX and XX, GT or LT options at the same time are not compatible");
  if (gt && lt) return error("ERR GT and LT options at the same time are not compatible");
  const std::string_view invalid = milliseconds ? "ERR invalid expire time in 'pexpire' command"
                                                : "ERR invalid expire time in 'expire' command";
  if (!milliseconds) {
    if (when > INT64_MAX / 1000 || when < INT64_MIN / 1000) return error(invalid);
    when *= 1000;
  }
  const std::int64_t base = store_.now();
  if (when > INT64_MAX - base) return error(invalid);
  when += base;
  const Store::ExpireCondition condition = nx   ? Store::ExpireCondition::nx
                                           : xx ? Store::ExpireCondition::xx
                                           : gt ? Store::ExpireCondition::gt
                                           : lt ? Store::ExpireCondition::lt
                                                : Store::ExpireCondition::always;
  append_integer(out_, store_.expire_at(args[1], when, condition) ? 1 : 0);
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
    message.append(args[1].substr(0, 128)).append("'. Try CONFIG HELP.");
    return error(message);
  }
  if (args.size() < 3) return wrong_arity("config|get");
  static constexpr std::pair<std::string_view, std::string_view> kParameters[] = {{"save", ""},
                                                                                  {"appendonly", "no"}};
  std::size_t found = 0;
  for (const auto& [name, value] : kParameters)
    if (std::any_of(args.begin() + 2, args.end(), [&](std::string_view a) { return equals_ci(a, name); }))
      ++found;
  append_array_header(out_, 2 * found);
  for (const auto& [name, value] : kParameters) {
    if (std::any_of(args.begin() + 2, args.end(), [&](std::string_view a) { return equals_ci(a, name); })) {
      append_bulk(out_, name);
      append_bulk(out_, value);
    }
  }
}

}  // namespace skein_samples::kv
