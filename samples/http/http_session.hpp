// http_session.hpp: the request handling of samples/http_server as pure logic, with no I/O. Bytes
// from the peer go in through feed(), in pieces of any size; response bytes come out of output(),
// and should_close() says whether to close the connection once they are written. Parsing is
// Debian's libhttp-parser (nodejs/http-parser 2.9).
//
// The routes are those of a small aiohttp app:
//
//   GET /        -> 200 <h1>Index Page</h1>
//   GET /{name}  -> 200 <h1>Hello, {name}</h1>   (one non-empty path segment, %-decoded, HTML-escaped)
//
// HEAD is answered on both like GET, without the body (aiohttp's add_get does the same). Any other
// method on those two routes gets 405 with an Allow header; any other path gets 404, whatever the
// method (the route table is consulted before the method, as aiohttp does). The query string is
// ignored. An invalid %-escape stays as it was written (yarl does the same).
//
// Connections: HTTP/1.1 keeps the connection open unless the request says "Connection: close";
// HTTP/1.0 closes unless it says "Connection: keep-alive". Pipelined requests are answered in
// order. A request with a body (Content-Length or chunked) is answered once the whole body has
// been read; the body itself is discarded. Errors close the connection after their response:
// 400 for a malformed request, 431 when the request line and headers exceed
// Limits::max_header_bytes, 413 when a body exceeds Limits::max_body_bytes. A request that asks to
// upgrade the protocol (or a CONNECT) is answered normally and then the connection closes, since
// this server speaks nothing but HTTP/1.x; a major version other than 1 gets 505. "Expect:
// 100-continue" is not answered with a 100; such clients send the body after their own short wait.
//
// Every response is HTTP/1.1 with Server, Date, Content-Type and Content-Length, plus "Connection:
// close" when the connection will close (or "Connection: keep-alive" to an HTTP/1.0 client that
// asked for it). Errors have a text body naming the status, "404: Not Found", as aiohttp's do.
// Buffers are reused from one request to the next: a keep-alive connection allocates nothing per
// request once they have grown to fit.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace skein_samples::http {

class HttpSession {
 public:
  struct Limits {
    std::size_t max_header_bytes = 8 * 1024;   // request line + headers, per request
    std::size_t max_body_bytes = 1024 * 1024;  // per request, Content-Length or chunked
  };

  HttpSession() : HttpSession(Limits{}) {}
  explicit HttpSession(Limits limits);
  HttpSession(const HttpSession&) = delete;
  HttpSession& operator=(const HttpSession&) = delete;

  // Parses `size` more bytes from the peer and appends the responses of every request they
  // complete to output(). Once should_close() is true, further bytes are ignored.
  void feed(const char* data, std::size_t size);

  // The response bytes produced so far and not yet taken.
  std::string_view output() const noexcept { return out_; }
  // Forgets output() (after the caller wrote it). The buffer keeps its capacity for the next one.
  void clear_output() noexcept { out_.clear(); }

  // True once the connection should close after output() has been written.
  bool should_close() const noexcept { return closing_; }

  // Responses produced since the session began (every request answered, errors included).
  std::uint64_t responses() const noexcept { return responses_; }

  // Routes consulted before the table above: given a request's path, fills `body` (text/plain)
  // and returns true, or returns false to leave the path to the table. GET and HEAD only (405
  // otherwise). http_server's --debug-routes.
  using ExtraRoutes = std::function<bool(std::string_view path, std::string& body)>;
  void set_extra_routes(ExtraRoutes routes) { extra_routes_ = std::move(routes); }

 private:
  static int on_message_begin(http_parser* p);
  static int on_url(http_parser* p, const char* at, std::size_t size);
  static int on_headers_complete(http_parser* p);
  static int on_body(http_parser* p, const char* at, std::size_t size);
  static int on_message_complete(http_parser* p);

  // Answers the request just parsed.
  void respond();
  // Appends an error response and stops the session.
  void fail(int status);
  // Appends one response: status line, headers, and `body` unless `head_only`.
  void append_response(int status, std::string_view reason, std::string_view content_type,
                       std::string_view body, bool head_only, bool keep_alive,
                       std::string_view extra_headers = {});

  http_parser parser_;
  Limits limits_;
  std::string url_;      // the request target, gathered across feeds
  std::string decoded_;  // scratch for the decoded {name}, reused by every request
  std::string body_;     // scratch for the response body, reused by every request
  std::string out_;
  ExtraRoutes extra_routes_;
  std::size_t header_bytes_ = 0;  // of the current request, until its headers are complete
  std::size_t body_bytes_ = 0;
  std::uint64_t responses_ = 0;
  bool in_headers_ = true;     // the current request's headers are not complete yet
  bool message_done_ = false;  // set by on_message_complete, which pauses the parser
  bool closing_ = false;
  int error_status_ = 0;  // set by a callback that rejects the request (413, 431)
};

// Appends `in` with %XX escapes decoded to `out`; an invalid escape is kept as written.
void percent_decode(std::string_view in, std::string& out);
// Appends `in` to `out` with & < > " ' written as HTML character references.
void html_escape(std::string_view in, std::string& out);

}  // namespace skein_samples::http
