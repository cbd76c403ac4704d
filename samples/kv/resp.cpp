// resp.cpp: RespParser and the reply writers (see the header).

#include "resp.hpp"

#include <charconv>
#include <cstring>

namespace skein_samples::kv {

namespace {

// The C locale's isspace, with which sdssplitargs skips the blanks between words and checks what
// follows a closing quote.
bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// What ends an unquoted word in sdssplitargs: fewer characters than isspace (not \v or \f).
bool ends_word(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\0';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Where the next '\r' is in data[from..], or npos.
std::size_t find_cr(std::string_view data, std::size_t from) {
  if (from >= data.size()) return std::string_view::npos;
  const void* p = std::memchr(data.data() + from, '\r', data.size() - from);
  return p ? static_cast<std::size_t>(static_cast<const char*>(p) - data.data()) : std::string_view::npos;
}

}  // namespace

bool parse_int64(std::string_view text, std::int64_t& value) noexcept {
  if (text.empty() || text.size() > 20) return false;
  if (text == "0") {
    value = 0;
    return true;
  }
  const bool negative = text[0] == '-';
  const std::string_view digits = negative ? text.substr(1) : text;
  if (digits.empty() || digits[0] < '1' || digits[0] > '9') return false;  // no '+', blanks, 0-prefix
  std::uint64_t magnitude = 0;
  const char* end = digits.data() + digits.size();
  const auto [ptr, ec] = std::from_chars(digits.data(), end, magnitude);
  if (ec != std::errc() || ptr != end) return false;
  constexpr std::uint64_t kMax = static_cast<std::uint64_t>(INT64_MAX);
  if (negative) {
    if (magnitude > kMax + 1) return false;
    value = magnitude == kMax + 1 ? INT64_MIN : -static_cast<std::int64_t>(magnitude);
  } else {
    if (magnitude > kMax) return false;
    value = static_cast<std::int64_t>(magnitude);
  }
  return true;
}

void RespParser::reset() noexcept {
  in_multibulk_ = false;
  pos_ = 0;
  expected_ = 0;
  bulk_length_ = -1;
  spans_.clear();
}

RespParser::Status RespParser::fail(std::string_view message) {
  error_.assign("Protocol error: ").append(message);
  reset();
  consumed_ = 0;
  return Status::error;
}

RespParser::Status RespParser::done(std::size_t consumed) {
  consumed_ = consumed;
  reset();
  return args_.empty() ? Status::skip : Status::command;
}

RespParser::Status RespParser::parse(std::string_view data) {
  consumed_ = 0;
  if (!in_multibulk_) {
    if (data.empty()) {
      wanted_ = 1;
      return Status::incomplete;
    }
    if (data[0] != '*') return parse_inline(data);
    in_multibulk_ = true;
    pos_ = 0;
    expected_ = -1;
    bulk_length_ = -1;
    spans_.clear();
  }
  return parse_multibulk(data);
}

RespParser::Status RespParser::parse_multibulk(std::string_view data) {
  if (expected_ < 0) {  // the header, "*<count>\r\n"
    // A line over the limit is refused whether or not its end has arrived yet, so the outcome
    // does not depend on how the input was split into reads.
    const std::size_t cr = find_cr(data, 1);
    if (cr != std::string_view::npos && cr > limits_.max_inline) return fail("too big mbulk count string");
    if (cr == std::string_view::npos) {
      if (data.size() > limits_.max_inline) return fail("too big mbulk count string");
      wanted_ = data.size() + 1;
      return Status::incomplete;
    }
    if (cr + 1 >= data.size()) {
      wanted_ = cr + 2;
      return Status::incomplete;
    }
    std::int64_t count = 0;
    if (data[cr + 1] != '\n' || !parse_int64(data.substr(1, cr - 1), count) ||
        count > static_cast<std::int64_t>(limits_.max_multibulk))
      return fail("invalid multibulk length");
    pos_ = cr + 2;
    if (count <= 0) {
      args_.clear();
      return done(pos_);
    }
    expected_ = count;
  }
  while (static_cast<std::int64_t>(spans_.size()) < expected_) {
    if (bulk_length_ < 0) {  // the argument's header, "$<length>\r\n"
      if (pos_ >= data.size()) {
        wanted_ = pos_ + 1;
        return Status::incomplete;
      }
      if (data[pos_] != '$') {
        std::string message = "expected '$', got ' '";
        message[message.size() - 2] = data[pos_];
        return fail(message);
      }
      const std::size_t cr = find_cr(data, pos_ + 1);
      if (cr != std::string_view::npos && cr - pos_ > limits_.max_inline)
        return fail("too big bulk count string");
      if (cr == std::string_view::npos) {
        if (data.size() - pos_ > limits_.max_inline) return fail("too big bulk count string");
        wanted_ = data.size() + 1;
        return Status::incomplete;
      }
      if (cr + 1 >= data.size()) {
        wanted_ = cr + 2;
        return Status::incomplete;
      }
      std::int64_t length = 0;
      if (data[cr + 1] != '\n' || !parse_int64(data.substr(pos_ + 1, cr - pos_ - 1), length) || length < 0 ||
          static_cast<std::uint64_t>(length) > limits_.max_bulk)
        return fail("invalid bulk length");
      bulk_length_ = length;
      pos_ = cr + 2;
    }
    const std::size_t length = static_cast<std::size_t>(bulk_length_);
    const std::size_t end = pos_ + length + 2;
    if (data.size() < end) {
      wanted_ = end;
      return Status::incomplete;
    }
    if (data[end - 2] != '\r' || data[end - 1] != '\n') return fail("expected CRLF after bulk");
    spans_.emplace_back(pos_, length);
    pos_ = end;
    bulk_length_ = -1;
  }
  args_.clear();
  for (const auto& [offset, length] : spans_) args_.emplace_back(data.data() + offset, length);
  return done(pos_);
}

// One line, split as Redis's sdssplitargs splits it. Redis finds the line's end with strchr, which
// stops at a NUL byte: a line with a NUL before its '\n' never ends, and the request waits for
// more input until it is too big, as it does in Redis.
RespParser::Status RespParser::parse_inline(std::string_view data) {
  std::size_t newline = 0;
  while (newline < data.size() && data[newline] != '\n' && data[newline] != '\0') ++newline;
  if (newline == data.size() || data[newline] == '\0' || newline > limits_.max_inline) {
    // (A line over the limit is refused even when its end is here, as for the multibulk header.)
    if (data.size() > limits_.max_inline || newline > limits_.max_inline)
      return fail("too big inline request");
    wanted_ = data.size() + 1;
    return Status::incomplete;
  }
  const std::string_view line = data.substr(0, newline);

  args_.clear();
  inline_scratch_.clear();
  inline_scratch_.reserve(line.size());  // no reallocation below: the views stay valid
  std::size_t i = 0;
  const std::size_t n = line.size();
  const auto at = [&](std::size_t k) { return k < n ? line[k] : '\0'; };
  for (;;) {
    while (i < n && is_blank(line[i])) ++i;
    if (i >= n) break;
    const std::size_t start = inline_scratch_.size();
    bool in_double = false, in_single = false, word_done = false;
    while (!word_done) {
      const char c = at(i);
      if (in_double) {
        if (c == '\\' && at(i + 1) == 'x' && hex_value(at(i + 2)) >= 0 && hex_value(at(i + 3)) >= 0) {
          inline_scratch_ += static_cast<char>(hex_value(at(i + 2)) * 16 + hex_value(at(i + 3)));
          i += 3;
        } else if (c == '\\' && at(i + 1) != '\0') {
          ++i;
          switch (line[i]) {
            case 'n':
              inline_scratch_ += '\n';
              break;
            case 'r':
              inline_scratch_ += '\r';
              break;
            case 't':
              inline_scratch_ += '\t';
              break;
            case 'b':
              inline_scratch_ += '\b';
              break;
            case 'a':
              inline_scratch_ += '\a';
              break;
            default:
              inline_scratch_ += line[i];
              break;
          }
        } else if (c == '"') {
          // The closing quote must be followed by a blank or the end of the line.
          if (at(i + 1) != '\0' && !is_blank(at(i + 1))) return fail("unbalanced quotes in request");
          word_done = true;
        } else if (c == '\0') {
          return fail("unbalanced quotes in request");
        } else {
          inline_scratch_ += c;
        }
      } else if (in_single) {
        if (c == '\\' && at(i + 1) == '\'') {
          ++i;
          inline_scratch_ += '\'';
        } else if (c == '\'') {
          if (at(i + 1) != '\0' && !is_blank(at(i + 1))) return fail("unbalanced quotes in request");
          word_done = true;
        } else if (c == '\0') {
          return fail("unbalanced quotes in request");
        } else {
          inline_scratch_ += c;
        }
      } else if (ends_word(c)) {
        word_done = true;
      } else if (c == '"') {
        in_double = true;
      } else if (c == '\'') {
        in_single = true;
      } else {
        inline_scratch_ += c;
      }
      if (i < n) ++i;
    }
    args_.emplace_back(inline_scratch_.data() + start, inline_scratch_.size() - start);
  }
  return done(newline + 1);
}

void append_simple(std::string& out, std::string_view text) {
  out += '+';
  out += text;
  out += "\r\n";
}

void append_error(std::string& out, std::string_view text) {
  // Redis trims CR and LF off both ends of an error message, then blanks those left inside.
  while (!text.empty() && (text.front() == '\r' || text.front() == '\n')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == '\r' || text.back() == '\n')) text.remove_suffix(1);
  const std::size_t start = out.size();
  out += '-';
  out += text;
  for (std::size_t i = start + 1; i < out.size(); ++i)
    if (out[i] == '\r' || out[i] == '\n') out[i] = ' ';
  out += "\r\n";
}

namespace {
// One RESP line of a type byte and a number: ":42\r\n", "$5\r\n", "*3\r\n".
template <class Number>
void append_line(std::string& out, char type, Number value) {
  char buf[24];
  buf[0] = type;
  char* end = std::to_chars(buf + 1, buf + sizeof buf - 2, value).ptr;
  *end++ = '\r';
  *end++ = '\n';
  out.append(buf, end);
}
}  // namespace

void append_integer(std::string& out, std::int64_t value) {
  append_line(out, ':', value);
}

void append_bulk(std::string& out, std::string_view data) {
  append_line(out, '$', data.size());
  out += data;
  out += "\r\n";
}

void append_null(std::string& out) {
  out += "$-1\r\n";
}

void append_array_header(std::string& out, std::size_t count) {
  append_line(out, '*', count);
}

}  // namespace skein_samples::kv
