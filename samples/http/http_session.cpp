// http_session.cpp: HttpSession, the sample server's HTTP/1.x request handling (see the header).
//
// The parser pauses itself at the end of every request (on_message_complete), so each call of
// http_parser_execute covers at most one request: that is what lets feed() count header bytes per
// request, and stop at the exact byte where a response that closes the connection was decided.

#include "http_session.hpp"

#include <algorithm>
#include <charconv>
#include <ctime>

namespace skein_samples::http {

namespace {

constexpr std::string_view kIndexBody = "<h1>Index Page</h1>";
constexpr std::string_view kHtml = "text/html; charset=utf-8";
constexpr std::string_view kText = "text/plain; charset=utf-8";

// The Date header's value (RFC 9110 IMF-fixdate) for the current second, formatted once per second
// per thread: a server answering 100k requests a second should not call gmtime for each.
std::string_view http_date() {
  struct Cache {
    std::time_t second = -1;
    char text[29];
  };
  thread_local Cache cache;
  const std::time_t now = std::time(nullptr);
  if (now != cache.second) {
    static constexpr char kDays[] = "SunMonTueWedThuFriSat";
    static constexpr char kMonths[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    std::tm tm{};
    gmtime_r(&now, &tm);
    char* p = cache.text;
    const auto two = [&p](int v) {
      *p++ = static_cast<char>('0' + v / 10);
      *p++ = static_cast<char>('0' + v % 10);
    };
    p = std::copy_n(kDays + 3 * tm.tm_wday, 3, p);
    *p++ = ',';
    *p++ = ' ';
    two(tm.tm_mday);
    *p++ = ' ';
    p = std::copy_n(kMonths + 3 * tm.tm_mon, 3, p);
    *p++ = ' ';
    const int year = (tm.tm_year + 1900) % 10000;
    two(year / 100);
    two(year % 100);
    *p++ = ' ';
    two(tm.tm_hour);
    *p++ = ':';
    two(tm.tm_min);
    *p++ = ':';
    two(tm.tm_sec);
    std::copy_n(" GMT", 4, p);
    cache.second = now;
  }
  return {cache.text, sizeof cache.text};
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Payload Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

void percent_decode(std::string_view in, std::string& out) {
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const int hi = hex_value(in[i + 1]);
      const int lo = hex_value(in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += in[i];
  }
}

void html_escape(std::string_view in, std::string& out) {
  for (;;) {
    const std::size_t special = in.find_first_of("&<>\"'");
    out.append(in.substr(0, special));
    if (special == std::string_view::npos) return;
    switch (in[special]) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += "&#39;";
        break;
    }
    in.remove_prefix(special + 1);
  }
}

HttpSession::HttpSession(Limits limits) : limits_(limits) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
}

void HttpSession::feed(const char* data, std::size_t size) {
  static const http_parser_settings settings = [] {
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_message_begin = &HttpSession::on_message_begin;
    s.on_url = &HttpSession::on_url;
    s.on_headers_complete = &HttpSession::on_headers_complete;
    s.on_body = &HttpSession::on_body;
    s.on_message_complete = &HttpSession::on_message_complete;
    return s;
  }();

  while (size > 0 && !closing_) {
    // While headers are incomplete, hand the parser no more than what is left of the header
    // budget, so an oversized request is caught at its first byte past max_header_bytes, however
    // the input is split.
    std::size_t chunk = size;
    const bool was_in_headers = in_headers_;
    if (was_in_headers) {
      chunk = std::min(size, limits_.max_header_bytes - header_bytes_);
      if (chunk == 0) {
        fail(431);
        return;
      }
    }

    message_done_ = false;
    const std::size_t n = http_parser_execute(&parser_, &settings, data, chunk);
    data += n;
    size -= n;

    if (message_done_) {
      // on_message_complete answered the request and paused the parser; in_headers_ and
      // header_bytes_ already describe the next request.
      http_parser_pause(&parser_, 0);
      if (parser_.upgrade) closing_ = true;  // what follows would be another protocol
      continue;
    }
    if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) {
      fail(error_status_ != 0 ? error_status_ : 400);
      return;
    }
    if (was_in_headers && in_headers_) header_bytes_ += n;
    if (n != chunk) {  // the parser stopped without an error: nothing it can read follows
      fail(400);
      return;
    }
  }
}

int HttpSession::on_message_begin(http_parser* p) {
  auto* self = static_cast<HttpSession*>(p->data);
  self->url_.clear();
  self->body_bytes_ = 0;
  return 0;
}

int HttpSession::on_url(http_parser* p, const char* at, std::size_t size) {
  static_cast<HttpSession*>(p->data)->url_.append(at, size);
  return 0;
}

int HttpSession::on_headers_complete(http_parser* p) {
  auto* self = static_cast<HttpSession*>(p->data);
  self->in_headers_ = false;
  if ((p->flags & F_CONTENTLENGTH) != 0 && p->content_length > self->limits_.max_body_bytes) {
    self->error_status_ = 413;
    return -1;  // any value but 0, 1 and 2 is an error (1 and 2 mean "skip the body")
  }
  return 0;
}

int HttpSession::on_body(http_parser* p, const char*, std::size_t size) {
  auto* self = static_cast<HttpSession*>(p->data);
  self->body_bytes_ += size;
  if (self->body_bytes_ > self->limits_.max_body_bytes) {  // a chunked body that grew too long
    self->error_status_ = 413;
    return -1;
  }
  return 0;
}

int HttpSession::on_message_complete(http_parser* p) {
  auto* self = static_cast<HttpSession*>(p->data);
  self->respond();
  self->message_done_ = true;
  self->in_headers_ = true;
  self->header_bytes_ = 0;
  http_parser_pause(p, 1);
  return 0;
}

void HttpSession::respond() {
  if (parser_.http_major != 1) {
    fail(505);
    return;
  }
  const bool keep_alive = http_should_keep_alive(&parser_) != 0 && parser_.upgrade == 0;
  const auto method = static_cast<http_method>(parser_.method);
  const bool head = method == HTTP_HEAD;

  // The path: origin form ("/a?b") is the common case; absolute form ("http://h/a") is allowed
  // by RFC 9112 for any request. '*' and CONNECT's authority form match no route.
  std::string_view path;
  std::string_view target = url_;
  if (!target.empty() && target.front() == '/') {
    path = target.substr(0, target.find_first_of("?#"));
  } else if (method != HTTP_CONNECT && target != "*") {
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(target.data(), target.size(), 0, &u) != 0) {
      fail(400);
      return;
    }
    path = (u.field_set & (1 << UF_PATH)) != 0
               ? target.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len)
               : std::string_view("/");
  }

  body_.clear();
  if (extra_routes_ && extra_routes_(path, body_)) {
    if (method != HTTP_GET && !head)
      append_response(405, reason_phrase(405), kText, {}, false, keep_alive, "Allow: GET, HEAD\r\n");
    else
      append_response(200, reason_phrase(200), kText, body_, head, keep_alive);
    return;
  }
  if (path == "/") {
    body_ = kIndexBody;
  } else if (path.size() > 1 && path.front() == '/' && path.find('/', 1) == std::string_view::npos) {
    body_ = "<h1>Hello, ";
    decoded_.clear();
    percent_decode(path.substr(1), decoded_);
    html_escape(decoded_, body_);
    body_ += "</h1>";
  } else {
    append_response(404, reason_phrase(404), kText, {}, head, keep_alive);
    return;
  }

  if (method != HTTP_GET && !head) {
    append_response(405, reason_phrase(405), kText, {}, false, keep_alive, "Allow: GET, HEAD\r\n");
    return;
  }
  append_response(200, reason_phrase(200), kHtml, body_, head, keep_alive);
}

void HttpSession::fail(int status) {
  append_response(status, reason_phrase(status), kText, {}, false, false);
}

void HttpSession::append_response(int status, std::string_view reason, std::string_view content_type,
                                  std::string_view body, bool head_only, bool keep_alive,
                                  std::string_view extra_headers) {
  char status_text[16];
  const auto status_end = std::to_chars(status_text, status_text + sizeof status_text, status).ptr;
  const std::string_view code(status_text, static_cast<std::size_t>(status_end - status_text));

  // An error's body names it, "404: Not Found", as aiohttp's error pages do.
  char error_text[64];
  if (body.empty() && status >= 400) {
    char* p = std::copy(code.begin(), code.end(), error_text);
    p = std::copy_n(": ", 2, p);
    p = std::copy(reason.begin(), reason.begin() + std::min<std::size_t>(reason.size(), 40), p);
    body = std::string_view(error_text, static_cast<std::size_t>(p - error_text));
  }
  char length_text[24];
  const auto length_end = std::to_chars(length_text, length_text + sizeof length_text, body.size()).ptr;

  out_.append("HTTP/1.1 ").append(code).append(" ").append(reason);
  out_.append("\r\nServer: skein\r\nDate: ").append(http_date());
  out_.append("\r\nContent-Type: ").append(content_type);
  out_.append("\r\nContent-Length: ").append(length_text, length_end);
  out_.append("\r\n").append(extra_headers);
  if (!keep_alive) {
    out_.append("Connection: close\r\n");
    closing_ = true;
  } else if (parser_.http_minor == 0) {
    out_.append("Connection: keep-alive\r\n");  // HTTP/1.0 needs to hear it to keep the connection
  }
  out_.append("\r\n");
  if (!head_only) out_.append(body);
  ++responses_;
}

}  // namespace skein_samples::http
