// fetch: a concurrent wget, one fiber per URL. The Python it answers:
//
//   async def wget(host):
//       reader, writer = await asyncio.open_connection(host, 80)
//       writer.write(('GET / HTTP/1.0\r\nHost: %s\r\n\r\n' % host).encode('utf-8'))
//       await writer.drain()
//       while True:
//           line = await reader.readline()
//           if line == b'\r\n':
//               break
//           print('%s header > %s' % (host, line.decode('utf-8').rstrip()))
//       writer.close()
//
//   asyncio.run(asyncio.wait([wget(h) for h in ['www.sina.com.cn', 'www.sohu.com', 'www.163.com']]))
//
// Each fetch is plain blocking code on its own fiber: take a connection to the URL's origin from a
// small pool (an idle kept-alive one, or a new one: connect, the name lookup on the blocking pool,
// and for https:// a TLS handshake that verifies the server's certificate and name, asyncio's
// ssl=True), send the request, read and parse the response (libhttp-parser, response mode),
// printing the status line and each header as it arrives, give the connection back, and follow a
// redirect if asked to. The fetches overlap; a summary with timings follows.

#include <skein/skein.hpp>
#if SKEIN_SAMPLES_TLS
#include <skein/tls.hpp>
#endif

#include "cli.hpp"
#include "io_check.hpp"

#include <http_parser.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: fetch [OPTIONS] URL...\n"
    "\n"
    "Fetches every URL at once, one fiber each, with 'GET' over HTTP/1.1. Connections are kept\n"
    "alive and shared: requests to the same origin (scheme, host and port) reuse an idle connection\n"
    "to it, and at most --per-host of them are open per origin at a time (the other requests to it\n"
    "wait for one). A kept-alive connection that the server closed while it was idle is noticed by\n"
    "the next request on it, which is sent once more on a new connection if no byte of its response\n"
    "had arrived, or if the response is '408 Request Timeout' (the server gave up on the idle\n"
    "connection before the request came; it was not processed). A 408 on a new connection is the\n"
    "URL's result. Bodies may be sized by Content-Length, chunked, or end when the server closes.\n"
    "\n"
    "Prints what happens to each URL as it happens, prefixed by its index ('[2] connected to\n"
    "127.0.0.1:80 (connection 1)', '[2] header > Content-Length: 19'), then a summary: per URL the\n"
    "status, body bytes, time (from its first request to its last byte), the connection it used\n"
    "(new or reused), the redirects followed and whether it was retried; then the totals: URLs\n"
    "fetched and failed, bytes, wall time, and connections opened for how many requests.\n"
    "URLs: http://HOST[:PORT][/PATH][?QUERY], and https:// the same (TLS: the server's certificate\n"
    "and name are verified against the system's CAs; a refused certificate fails its URL with\n"
    "OpenSSL's reason). Exits 1 if any fetch failed (no complete response, a refused certificate,\n"
    "too many redirects, or a status of 400 or more), 2 on bad arguments.\n"
    "\n"
    "  -L, --location     follow redirects (301, 302, 303, 307, 308; a relative Location is resolved\n"
    "                     against the URL that answered; every request is a GET); without -L a\n"
    "                     redirect is the URL's result, reported with its status\n"
    "  --max-redirs N     with -L: fail a URL that redirects more than N times, 0..1000; default 10\n"
    "  --per-host N       at most N connections open to one origin at a time, 1..256; default 6\n"
    "  --timeout S        give up on a URL after S seconds from its first request (connects,\n"
    "                     handshakes, requests, responses and redirects; waiting for a free\n"
    "                     connection to its host before that is not counted), 0.001..3600;\n"
    "                     default 30\n"
    "  --output-dir DIR   save each URL's body (the last response's, after redirects) as\n"
    "                     DIR/INDEX-NAME, NAME being the last segment of the URL's path (index.html\n"
    "                     if it has none); a failed URL leaves no file\n"
    "  --cacert FILE      https: trust the CA certificates in FILE (PEM) instead of the system's\n"
    "  --insecure         https: accept any certificate and name (no verification)\n"
    "  -q, --quiet        print only failures and the summary\n"
    "  -h, --help         show this help and exit\n";

struct Options {
  bool follow = false;
  int max_redirects = 10;
  int per_host = 6;
  std::chrono::duration<double> timeout{30.0};
  std::string output_dir;
  bool quiet = false;
};

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

struct Url {
  std::string text;       // the URL without its fragment
  std::string scheme;     // "http" or "https", lower case
  std::string host;       // for the lookup: no brackets around an IPv6 literal
  std::string authority;  // as the URL wrote it, with the port if it gave one (the Host header)
  std::uint16_t port = 80;
  std::string path;  // path and query

  bool tls() const noexcept { return scheme == "https"; }
  // The key of the connection pool: requests to one origin may share a connection.
  std::string origin() const {
    std::string key = scheme + "://";
    for (char c : host) key += lower(c);
    return key + ":" + std::to_string(port);
  }
};

// Parses an absolute http(s):// URL; throws std::invalid_argument saying what is wrong with it.
Url parse_url(std::string_view url) {
  const auto bad = [](std::string why) { throw std::invalid_argument(why); };
  url = url.substr(0, url.find('#'));  // the fragment is the client's, never sent
  http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(url.data(), url.size(), 0, &u) != 0 || !(u.field_set & (1 << UF_SCHEMA)))
    bad("expected http[s]://HOST[:PORT][/PATH]");
  const auto field = [&](int f) { return url.substr(u.field_data[f].off, u.field_data[f].len); };
  std::string scheme(field(UF_SCHEMA));
  for (char& c : scheme) c = lower(c);
#if SKEIN_SAMPLES_TLS
  if (scheme != "http" && scheme != "https") bad("only http:// and https:// URLs are supported");
#else
  if (scheme == "https") bad("https is not supported: skein was built without TLS (http:// only)");
  if (scheme != "http") bad("only http:// URLs are supported");
#endif
  if (!(u.field_set & (1 << UF_HOST)) || u.field_data[UF_HOST].len == 0) bad("no host");
  if (u.field_set & (1 << UF_USERINFO)) bad("user names and passwords are not supported");

  Url t;
  t.text = url;
  t.scheme = scheme;
  t.host = field(UF_HOST);
  if (t.tls()) t.port = 443;
  if (u.field_set & (1 << UF_PORT)) {
    if (u.port == 0) bad("port 0");
    t.port = u.port;
  }
  const std::size_t authority = url.find("//") + 2;
  t.authority = url.substr(authority, url.find_first_of("/?", authority) - authority);
  t.path = (u.field_set & (1 << UF_PATH)) ? std::string(field(UF_PATH)) : "/";
  if (u.field_set & (1 << UF_QUERY)) t.path += "?" + std::string(field(UF_QUERY));
  return t;
}

// RFC 3986 5.2.4: "/a/b/../c/./d" -> "/a/c/d".
std::string remove_dot_segments(std::string_view in) {
  std::string out;
  const auto drop_last = [&out] {
    const std::size_t slash = out.rfind('/');
    out.erase(slash == std::string::npos ? 0 : slash);
  };
  while (!in.empty()) {
    if (in.starts_with("../")) {
      in.remove_prefix(3);
    } else if (in.starts_with("./") || in.starts_with("/./")) {
      in.remove_prefix(2);  // "/./x" leaves "/x"
    } else if (in == "/.") {
      in = "/";
    } else if (in.starts_with("/../")) {
      in.remove_prefix(3);
      drop_last();
    } else if (in == "/..") {
      in = "/";
      drop_last();
    } else if (in == "." || in == "..") {
      in = {};
    } else {
      const std::size_t end = in.find('/', 1);
      out += in.substr(0, end);
      in.remove_prefix(end == std::string_view::npos ? in.size() : end);
    }
  }
  return out;
}

// A Location header's URL, resolved against the URL that answered (RFC 3986 5.2.2).
std::string resolve(const Url& base, std::string_view ref) {
  ref = ref.substr(0, ref.find('#'));
  // An absolute URL has a scheme: a letter, then letters, digits, '+', '-' or '.', then ':'.
  const std::size_t colon = ref.find_first_of(":/?");
  if (colon != std::string_view::npos && colon > 0 && ref[colon] == ':') {
    bool scheme = (ref[0] | 0x20) >= 'a' && (ref[0] | 0x20) <= 'z';
    for (std::size_t i = 1; i < colon; ++i) {
      const char c = ref[i];
      scheme = scheme && (((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
                          c == '-' || c == '.');
    }
    if (scheme) return std::string(ref);
  }
  if (ref.starts_with("//")) return base.scheme + ":" + std::string(ref);
  const std::string prefix = base.scheme + "://" + base.authority;
  const std::string_view base_path = std::string_view(base.path).substr(0, base.path.find('?'));
  if (ref.empty()) return prefix + base.path;
  if (ref[0] == '?') return prefix + std::string(base_path) + std::string(ref);
  const std::size_t query = ref.find('?');
  const std::string_view ref_path = ref.substr(0, query);
  const std::string_view ref_query = query == std::string_view::npos ? "" : ref.substr(query);
  std::string merged;
  if (ref_path.starts_with("/"))
    merged = ref_path;
  else
    merged = std::string(base_path.substr(0, base_path.rfind('/') + 1)) + std::string(ref_path);
  return prefix + remove_dot_segments(merged) + std::string(ref_query);
}

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// Seconds as a person writes them: 30, 0.5, 3600.
std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", seconds);
  return text;
}

// The file a URL's body goes to: DIR/INDEX-NAME, NAME the last segment of its path.
std::string output_path(const std::string& dir, std::size_t index, const Url& url) {
  std::string_view path = std::string_view(url.path).substr(0, url.path.find('?'));
  std::string_view last = path.substr(path.rfind('/') + 1);
  std::string name;
  for (char c : last.substr(0, 100)) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '-' || c == '_';
    name += plain ? c : '_';
  }
  if (name.empty() || name == "." || name == "..") name = "index.html";
  return dir + "/" + std::to_string(index) + "-" + name;
}

// Where a body is saved: opened when the response that is kept begins, removed if it fails.
// Plain stdio: writes land in the page cache, which does not hold a fiber up for long.
class OutputFile {
 public:
  explicit OutputFile(std::string path) : path_(std::move(path)) {}
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() { discard(); }

  // Starts the file afresh (a response's body begins); false with error() set if it cannot.
  bool open() {
    if (file_ != nullptr) std::fclose(file_);
    file_ = std::fopen(path_.c_str(), "wb");
    if (file_ == nullptr) error_ = "cannot write " + path_ + ": " + std::strerror(errno);
    return file_ != nullptr;
  }
  bool write(const char* data, std::size_t size) {
    if (std::fwrite(data, 1, size, file_) == size) return true;
    error_ = "cannot write " + path_ + ": " + std::strerror(errno);
    return false;
  }
  // Keeps the file: closes it (false with error() set if the last writes fail).
  bool commit() {
    if (file_ == nullptr) return true;
    const bool ok = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!ok) {
      error_ = "cannot write " + path_ + ": " + std::strerror(errno);
      std::remove(path_.c_str());
    }
    return ok;
  }
  // Removes the file if one was started and not committed.
  void discard() noexcept {
    if (file_ == nullptr) return;
    std::fclose(file_);
    file_ = nullptr;
    std::remove(path_.c_str());
  }
  const std::string& error() const noexcept { return error_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::string error_;
};

// Reads one response with http_parser, printing the status line and each header line as soon as
// it is complete. Header names and values may arrive in any number of pieces. Interim (1xx)
// responses are printed and skipped.
class ResponseReader {
 public:
  // `follow`: a redirect with a Location is not the final response, so its body is not kept.
  ResponseReader(std::size_t index, bool follow, bool quiet, OutputFile* out)
      : index_(index), follow_(follow), quiet_(quiet), out_(out) {
    reset();
  }

  // Makes ready for the next response.
  void reset() {
    http_parser_init(&parser_, HTTP_RESPONSE);
    parser_.data = this;
    reason_.clear();
    line_.clear();
    location_.clear();
    in_value_ = status_printed_ = headers_done_ = complete_ = redirecting_ = eof_body_ = false;
    body_bytes_ = 0;
    error_.clear();
  }

  // Feeds `size` bytes (0: the stream ended) and returns how many belong to this response (the
  // rest follows its end); throws if the response is malformed.
  std::size_t feed(const char* data, std::size_t size) {
    std::size_t used = execute(data, size);
    while (complete_ && parser_.status_code / 100 == 1 && parser_.status_code != 101) {
      reset();                        // a 1xx: the real response follows
      if (used == size) return used;  // in a later read (0 bytes would tell the parser "end of stream")
      used += execute(data + used, size - used);
    }
    return used;
  }

  bool complete() const noexcept { return complete_; }
  bool headers_done() const noexcept { return headers_done_; }
  // The body runs until the server closes the connection (no length, not chunked).
  bool eof_body() const noexcept { return eof_body_; }
  // The connection may carry another request (HTTP/1.1 without 'Connection: close', a sized body).
  bool keep_alive() const noexcept { return complete_ && http_should_keep_alive(&parser_) != 0; }
  // A redirect that is to be followed (with -L): its body has been read and dropped.
  bool redirecting() const noexcept { return redirecting_; }
  int status() const noexcept { return status_printed_ ? static_cast<int>(parser_.status_code) : 0; }
  // The status code as far as the status line has been parsed (0 before), headers or not.
  int status_code() const noexcept { return static_cast<int>(parser_.status_code); }
  const std::string& reason() const noexcept { return reason_; }
  const std::string& location() const noexcept { return location_; }
  std::uint64_t body_bytes() const noexcept { return body_bytes_; }

 private:
  static ResponseReader& self(http_parser* p) { return *static_cast<ResponseReader*>(p->data); }

  std::size_t execute(const char* data, std::size_t size) {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_status = [](http_parser* p, const char* at, std::size_t n) {
        self(p).reason_.append(at, n);
        return 0;
      };
      s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
        ResponseReader& r = self(p);
        if (r.in_value_) r.end_line();
        r.print_status_line();
        r.in_value_ = false;
        r.line_.append(at, n);
        return 0;
      };
      s.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
        ResponseReader& r = self(p);
        if (!r.in_value_) r.line_ += ": ";
        r.in_value_ = true;
        r.line_.append(at, n);
        return 0;
      };
      s.on_headers_complete = [](http_parser* p) {
        ResponseReader& r = self(p);
        r.print_status_line();
        if (r.in_value_) r.end_line();
        r.in_value_ = false;  // what follows a chunked body's last chunk are trailers
        r.headers_done_ = true;
        const unsigned status = p->status_code;
        r.eof_body_ = !(p->flags & F_CHUNKED) && p->content_length == ULLONG_MAX && status / 100 != 1 &&
                      status != 204 && status != 304;
        r.redirecting_ = r.follow_ && is_redirect(static_cast<int>(status)) && !r.location_.empty();
        if (status / 100 != 1 && !r.redirecting_ && r.out_ != nullptr && !r.out_->open()) {
          r.error_ = r.out_->error();
          return -1;
        }
        // 1 tells the parser there is no body: these statuses have none even when a
        // Content-Length or a Transfer-Encoding says otherwise (RFC 9110, 6.4.1).
        return status / 100 == 1 || status == 204 || status == 304 ? 1 : 0;
      };
      s.on_body = [](http_parser* p, const char* at, std::size_t n) {
        ResponseReader& r = self(p);
        if (r.redirecting_) return 0;
        r.body_bytes_ += n;
        if (r.out_ != nullptr && !r.out_->write(at, n)) {
          r.error_ = r.out_->error();
          return -1;
        }
        return 0;
      };
      s.on_message_complete = [](http_parser* p) {
        ResponseReader& r = self(p);
        if (r.in_value_) r.end_line();  // the last trailer
        r.in_value_ = false;
        r.complete_ = true;
        http_parser_pause(p, 1);  // a response ends here, whatever follows
        return 0;
      };
      return s;
    }();
    const std::size_t used = http_parser_execute(&parser_, &settings, data, size);
    const auto err = HTTP_PARSER_ERRNO(&parser_);
    if (!error_.empty()) throw std::runtime_error(error_);
    if (err != HPE_OK && !(err == HPE_PAUSED && complete_))
      throw std::runtime_error(std::string("malformed response: ") + http_errno_description(err));
    return used;
  }

  void print_status_line() {
    if (status_printed_) return;
    status_printed_ = true;
    if (!quiet_)
      std::printf("[%zu] header > HTTP/%u.%u %u %s\n", index_, parser_.http_major, parser_.http_minor,
                  parser_.status_code, reason_.c_str());
  }
  void end_line() {
    if (!quiet_) std::printf("[%zu] %s > %s\n", index_, headers_done_ ? "trailer" : "header", line_.c_str());
    constexpr std::string_view name = "location: ";
    if (!headers_done_ && line_.size() >= name.size()) {
      bool match = true;
      for (std::size_t i = 0; i < name.size(); ++i) match = match && lower(line_[i]) == name[i];
      if (match) location_ = line_.substr(name.size());
    }
    line_.clear();
  }

  http_parser parser_;
  std::size_t index_;
  bool follow_;
  bool quiet_;
  OutputFile* out_;
  std::string reason_;
  std::string line_;  // the header line being gathered
  std::string location_;
  bool in_value_ = false;
  bool status_printed_ = false;
  bool headers_done_ = false;
  bool complete_ = false;
  bool redirecting_ = false;
  bool eof_body_ = false;
  std::uint64_t body_bytes_ = 0;
  std::string error_;  // a callback's failure (the output file), thrown by feed()
};

// The https settings every fetch shares: one TLS context (its session cache too), made when the
// first https URL needs it (loading the system's CAs is most of a plain run's start-up time).
class TlsSettings {
 public:
  TlsSettings(std::string cacert, bool insecure) : cacert_(std::move(cacert)), insecure_(insecure) {}

#if SKEIN_SAMPLES_TLS
  // The context; throws std::system_error if the CAs cannot be loaded. Any thread or fiber.
  const skein::TlsContext& context() {
    std::lock_guard lock(mutex_);  // held while loading: a fiber never parks in there
    if (!context_) {
      skein::TlsContext c = skein::TlsContext::client();
      if (!cacert_.empty()) c.clear_trust().trust_ca_file(cacert_);
      if (insecure_) c.disable_verification();
      context_ = std::move(c);
    }
    return *context_;
  }
#endif

 private:
  std::string cacert_;
  [[maybe_unused]] bool insecure_;  // unused without TLS
#if SKEIN_SAMPLES_TLS
  std::mutex mutex_;
  std::optional<skein::TlsContext> context_;
#endif
};

// One connection to an origin, plain or TLS; `number` counts them in the order they were opened.
struct Connection {
  std::optional<skein::Stream> plain;
#if SKEIN_SAMPLES_TLS
  std::optional<skein::TlsStream> secure;
#endif
  unsigned number = 0;
  std::string peer;

  skein::StreamRef stream() {
#if SKEIN_SAMPLES_TLS
    if (secure) return skein::StreamRef(*secure);
#endif
    return skein::StreamRef(*plain);
  }
};

// The connections to one origin: at most `limit` open at once, the idle ones kept for reuse.
struct Origin {
  explicit Origin(std::size_t limit) : slots(limit) {}
  skein::Semaphore slots;  // one permit per connection in use
  std::mutex mutex;        // guards idle; held for a push or a pop, never across a wait
  std::vector<std::unique_ptr<Connection>> idle;
};

// Every origin's connections. Lives inside skein::run: its sockets are closed there.
class Pool {
 public:
  Pool(std::size_t per_host, TlsSettings& tls) : per_host_(per_host), tls_(tls) {}

  Origin& origin(const std::string& key) {
    std::lock_guard lock(mutex_);
    std::unique_ptr<Origin>& o = origins_[key];
    if (!o) o = std::make_unique<Origin>(per_host_);
    return *o;
  }

  // Connects to `url`'s origin (and does the TLS handshake for https), printing what it got.
  std::unique_ptr<Connection> open(std::size_t index, const Url& url, skein::Deadline deadline, bool quiet) {
    auto c = std::make_unique<Connection>();
    c->plain.emplace(skein::connect(url.host, url.port, deadline));
    c->number = ++opened_;
    c->peer = c->plain->peer_address().to_string();
    if (!quiet) std::printf("[%zu] connected to %s (connection %u)\n", index, c->peer.c_str(), c->number);
#if SKEIN_SAMPLES_TLS
    if (url.tls()) {
      c->secure.emplace(std::move(*c->plain), tls_.context(), url.host);
      c->plain.reset();
      c->secure->handshake(deadline);
      if (!quiet)
        std::printf("[%zu] TLS %s %s, server %s%s\n", index, c->secure->version().c_str(),
                    c->secure->cipher().c_str(), c->secure->peer_subject().c_str(),
                    c->secure->session_reused() ? ", session resumed" : "");
    }
#endif
    return c;
  }

  unsigned opened() const noexcept {
    return opened_.load();
  }

  // Closes the idle connections, an https one with close_notify (the server then knows nothing was
  // cut off); a peer that no longer reads is not waited for long.
  void close_idle() {
    std::vector<std::unique_ptr<Connection>> idle;
    {
      std::lock_guard lock(mutex_);
      for (auto& [key, origin] : origins_) {
        std::lock_guard idle_lock(origin->mutex);
        for (auto& c : origin->idle) idle.push_back(std::move(c));
        origin->idle.clear();
      }
    }
#if SKEIN_SAMPLES_TLS
    for (auto& c : idle) {
      if (!c->secure) continue;
      try {
        c->secure->shutdown(std::chrono::milliseconds(200));
      } catch (const std::exception&) {
        // The server closed it already: nothing to tell it.
      }
    }
#endif
  }

 private:
  std::size_t per_host_;
  [[maybe_unused]] TlsSettings& tls_;  // unused without TLS
  std::mutex mutex_;                   // guards origins_; never held across a wait
  std::map<std::string, std::unique_ptr<Origin>> origins_;
  std::atomic<unsigned> opened_{0};
};

// A slot of an origin, held for one request and its response: the connection goes back to the
// origin's idle list if it may carry another request, else it is closed; the slot is freed.
class Lease {
 public:
  // Waits for a slot until `deadline` (throws timed_out), taking an idle connection if there is one.
  Lease(Origin& origin, skein::Deadline deadline) : origin_(origin) {
    if (!origin_.slots.try_acquire_until(deadline))
      throw std::system_error(std::make_error_code(std::errc::timed_out));
    std::lock_guard lock(origin_.mutex);
    if (!origin_.idle.empty()) {
      connection_ = std::move(origin_.idle.back());  // the most recently used: the least likely closed
      origin_.idle.pop_back();
    }
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() {
    if (connection_ && reusable_) {
      std::lock_guard lock(origin_.mutex);
      origin_.idle.push_back(std::move(connection_));
    }
    connection_.reset();
    origin_.slots.release();
  }

  Connection* connection() const noexcept { return connection_.get(); }
  void set(std::unique_ptr<Connection> c) noexcept { connection_ = std::move(c); }
  void drop() noexcept { connection_.reset(); }
  void reusable(bool yes) noexcept { reusable_ = yes; }

 private:
  Origin& origin_;
  std::unique_ptr<Connection> connection_;
  bool reusable_ = false;
};

struct Result {
  bool ok = false;
  int status = 0;  // 0 when no status line arrived
  std::string reason;
  std::uint64_t body_bytes = 0;
  double seconds = 0;
  std::string error;  // why it failed, when it did
  int redirects = 0;
  unsigned connection = 0;  // the connection of its last request
  bool reused = false;      // ... and whether that one had served a request before
  bool retried = false;     // a reused connection failed or answered 408, the request went again
  unsigned requests = 0;    // requests sent, retries included
  unsigned reuses = 0;      // of which on a kept-alive connection
};

bool is_timeout(const std::exception& e) {
  const auto* se = dynamic_cast<const std::system_error*>(&e);
  return se != nullptr && (se->code() == std::errc::timed_out || se->code() == std::errc::operation_canceled);
}

// Sends the request and reads its response into `reader`; `got_bytes` says whether any byte of
// the response arrived (a kept-alive connection that fails before then may be retried). With
// `stop_at_408`, a 408's headers end the exchange: its body is of no use, the request goes again.
void exchange(Connection& c, const Url& url, ResponseReader& reader, skein::Deadline deadline,
              bool stop_at_408, bool& got_bytes, bool& leftover) {
  const skein::StreamRef stream = c.stream();
  const std::string request = "GET " + url.path + " HTTP/1.1\r\nHost: " + url.authority +
                              "\r\nUser-Agent: skein-fetch\r\nAccept: */*\r\n\r\n";
  stream.write_all(request, deadline);
  std::array<char, 16 * 1024> buffer;
  const auto closed = [&](const char* how) {
    throw std::runtime_error(
        std::string(got_bytes ? "the server closed the connection before the response was complete"
                              : "the server closed the connection without a response") +
        how);
  };
  while (!reader.complete()) {
    std::size_t n = 0;
    try {
      n = stream.read(buffer, deadline);
    } catch (const std::system_error& e) {
#if SKEIN_SAMPLES_TLS
      // Many servers end a body that runs to the close without TLS's close_notify; as for a plain
      // connection, the close is then the only end such a body has.
      if (e.code() != skein::tls_errc::truncated) throw;
      if (!(reader.headers_done() && reader.eof_body())) closed(" (TLS: no close_notify)");
#else
      throw;
#endif
    }
    if (n == 0 && !(reader.headers_done() && reader.eof_body())) closed("");
    if (n > 0) got_bytes = true;
    const std::size_t used = reader.feed(buffer.data(), n);  // n == 0 ends a body that runs to the close
    if (reader.complete() && used < n) leftover = true;      // unasked-for bytes: do not reuse
    if (stop_at_408 && reader.headers_done() && reader.status() == 408) return;
  }
}

Result fetch(std::size_t index, const Url& first, const Options& options, Pool& pool) {
  Result result;
  std::optional<OutputFile> out;
  if (!options.output_dir.empty()) out.emplace(output_path(options.output_dir, index, first));
  ResponseReader reader(index, options.follow, options.quiet, out ? &*out : nullptr);
  std::optional<skein::TimePoint> start;
  skein::Deadline deadline;  // none while the first request waits for a slot
  Url url = first;
  try {
    for (;;) {
      Lease lease(pool.origin(url.origin()), deadline);
      if (!start) {
        start = skein::Clock::now();
        deadline = skein::Deadline(std::chrono::duration_cast<skein::Clock::duration>(options.timeout));
      }
      for (bool retry = false;; retry = true) {
        const bool reused = lease.connection() != nullptr;
        if (!reused) {
          lease.set(pool.open(index, url, deadline, options.quiet));
        } else if (!options.quiet) {
          std::printf("[%zu] reusing connection %u to %s\n", index, lease.connection()->number,
                      lease.connection()->peer.c_str());
        }
        result.connection = lease.connection()->number;
        result.reused = reused;
        ++result.requests;
        result.reuses += reused ? 1 : 0;
        reader.reset();
        bool got_bytes = false;
        bool leftover = false;
        // A server may close a kept-alive connection whenever it is idle, or first answer it with
        // a 408 Request Timeout: the request meets the close, or gets the 408 that was waiting.
        // Either way it was not processed, so it goes again, once, on a new connection; on a new
        // one, a 408 is the server's answer to this request.
        const bool may_retry = reused && !retry;
        std::optional<std::string> failure;  // why the exchange failed, when it may be retried
        try {
          exchange(*lease.connection(), url, reader, deadline, may_retry, got_bytes, leftover);
        } catch (const std::exception& e) {
          if (!may_retry || (got_bytes && reader.status_code() != 408) || is_timeout(e)) throw;
          failure = e.what();
        }
        if (may_retry && (failure || reader.status_code() == 408)) {
          if (!options.quiet) {
            if (reader.status_code() == 408)
              std::printf(
                  "[%zu] connection %u answered 408 Request Timeout (it had been idle): retrying on a "
                  "new connection\n",
                  index, lease.connection()->number);
            else
              std::printf(
                  "[%zu] connection %u failed before any response (%s): retrying on a new connection\n",
                  index, lease.connection()->number, failure->c_str());
          }
          lease.drop();
          result.retried = true;
          continue;
        }
        lease.reusable(reader.keep_alive() && !leftover);
        break;
      }
      if (!reader.redirecting()) break;
      if (result.redirects >= options.max_redirects)
        throw std::runtime_error("too many redirects (more than " + std::to_string(options.max_redirects) +
                                 ")");
      const std::string next = resolve(url, reader.location());
      try {
        url = parse_url(next);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error("bad redirect to '" + next + "': " + e.what());
      }
      ++result.redirects;
      if (!options.quiet) std::printf("[%zu] redirect %d -> %s\n", index, reader.status(), url.text.c_str());
    }
    const bool good = reader.status() < 400;
    if (good && out && !out->commit()) throw std::runtime_error(out->error());
    result.ok = good;
    if (!result.ok) result.error = "HTTP status " + std::to_string(reader.status());
    if (!options.follow && is_redirect(reader.status()) && !options.quiet)
      std::printf("[%zu] redirect %d to %s not followed (-L follows redirects)\n", index, reader.status(),
                  reader.location().c_str());
  } catch (const std::system_error& e) {
    result.error = e.code() == std::errc::timed_out
                       ? "timed out after " + seconds_text(options.timeout.count()) + " s"
                       : e.what();
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  if (!result.ok && out) out->discard();
  result.status = reader.status();
  result.reason = reader.reason();
  result.body_bytes = reader.body_bytes();
  if (start) result.seconds = std::chrono::duration<double>(skein::Clock::now() - *start).count();
  if (!result.ok) std::printf("[%zu] failed: %s\n", index, result.error.c_str());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "fetch";
  Options options;
  std::string_view cacert;
  bool insecure = false;
  std::vector<std::string_view> urls;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    const std::string_view arg = argv[i];
    if (cli::is_help(arg)) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "-L" || arg == "--location") {
      options.follow = true;
    } else if (cli::option("--max-redirs", i, argc, argv, value)) {
      options.max_redirects = cli::number("--max-redirs", value, 0, 1000);
    } else if (cli::option("--per-host", i, argc, argv, value)) {
      options.per_host = cli::number("--per-host", value, 1, 256);
    } else if (cli::option("--timeout", i, argc, argv, value)) {
      options.timeout = std::chrono::duration<double>(cli::number("--timeout", value, 0.001, 3600.0));
    } else if (cli::option("--output-dir", i, argc, argv, value)) {
      if (value.empty()) cli::usage_error("--output-dir needs a directory");
      options.output_dir = value;
    } else if (cli::option("--cacert", i, argc, argv, value)) {
      cacert = value;
    } else if (arg == "--insecure") {
      insecure = true;
    } else if (arg == "-q" || arg == "--quiet") {
      options.quiet = true;
    } else if (arg.starts_with("-")) {
      cli::unknown_argument(arg);
    } else {
      urls.push_back(arg);
    }
  }
  if (urls.empty()) cli::usage_error("no URL given");
  std::vector<Url> targets;
  for (std::string_view url : urls) {
    try {
      targets.push_back(parse_url(url));
    } catch (const std::invalid_argument& e) {
      cli::usage_error("bad URL '" + std::string(url) + "': " + e.what());
    }
  }
  if (!options.output_dir.empty()) {
    // Fail before fetching anything when the directory cannot take the files.
    const std::string probe = options.output_dir + "/.fetch-probe";
    std::FILE* f = std::fopen(probe.c_str(), "wb");
    if (f == nullptr)
      cli::usage_error("--output-dir: cannot write in '" + options.output_dir + "': " + std::strerror(errno));
    std::fclose(f);
    std::remove(probe.c_str());
  }
  TlsSettings tls{std::string(cacert), insecure};
#if SKEIN_SAMPLES_TLS
  // A bad --cacert is an error before anything is fetched when https URLs are given; otherwise it
  // fails the first redirect to one.
  bool any_https = false;
  for (const Url& t : targets) any_https = any_https || t.tls();
  if (any_https) {
    try {
      tls.context();
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "fetch: %s\n", e.what());
      return 1;
    }
  }
#else
  if (!cacert.empty() || insecure) cli::usage_error("--cacert and --insecure need skein built with TLS");
#endif

  cli::check_io_backend();
  const auto start = skein::Clock::now();
  std::vector<Result> results;
  unsigned opened = 0;
  try {
    results = skein::run([&] {
      Pool pool(static_cast<std::size_t>(options.per_host), tls);
      std::vector<skein::Task<Result>> tasks;
      for (std::size_t i = 0; i < targets.size(); ++i) {
        tasks.push_back(
            skein::spawn(skein::FiberOptions{"fetch-" + std::to_string(i + 1)},
                         [&targets, &options, &pool, i] { return fetch(i + 1, targets[i], options, pool); }));
      }
      auto all = skein::join_all(tasks);  // asyncio.wait: every fetch runs at once
      pool.close_idle();
      opened = pool.opened();
      return all;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fetch: %s\n", e.what());
    return 1;
  }
  const double elapsed = std::chrono::duration<double>(skein::Clock::now() - start).count();

  std::printf("summary:\n");
  std::size_t failed = 0;
  std::uint64_t bytes = 0;
  double sum = 0;
  unsigned requests = 0, reuses = 0, retries = 0, redirects = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::string how;
    if (r.connection != 0)
      how = "  connection " + std::to_string(r.connection) + (r.reused ? " (reused)" : " (new)");
    if (r.redirects > 0)
      how += ", " + std::to_string(r.redirects) + (r.redirects == 1 ? " redirect" : " redirects");
    if (r.retried) how += ", retried";
    if (r.ok)
      std::printf("  [%zu] %s  %d %s  %llu bytes  %.3f s%s\n", i + 1, targets[i].text.c_str(), r.status,
                  r.reason.c_str(), static_cast<unsigned long long>(r.body_bytes), r.seconds, how.c_str());
    else
      std::printf("  [%zu] %s  FAILED (%s)  %.3f s%s\n", i + 1, targets[i].text.c_str(), r.error.c_str(),
                  r.seconds, how.c_str());
    failed += r.ok ? 0 : 1;
    bytes += r.body_bytes;
    sum += r.seconds;
    requests += r.requests;
    reuses += r.reuses;
    retries += r.retried ? 1 : 0;
    redirects += static_cast<unsigned>(r.redirects);
  }
  std::printf("%zu fetched, %zu failed, %llu bytes in %.3f s (the fetches one after another: %.3f s)\n",
              results.size() - failed, failed, static_cast<unsigned long long>(bytes), elapsed, sum);
  std::printf(
      "%u connection%s opened for %u request%s (%u on a reused connection, %u retried), %u redirect%s "
      "followed\n",
      opened, opened == 1 ? "" : "s", requests, requests == 1 ? "" : "s", reuses, retries, redirects,
      redirects == 1 ? "" : "s");
  return failed == 0 ? 0 : 1;
}
