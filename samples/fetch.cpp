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
// Each fetch is plain blocking code on its own fiber: connect (the name lookup runs on the
// blocking pool), for https:// a TLS handshake that verifies the server's certificate and name
// (asyncio's ssl=True), send the request, read and parse the response (libhttp-parser, response
// mode), printing the status line and each header as it arrives. The fetches overlap; a summary
// follows.

#include <skein/skein.hpp>
#if SKEIN_SAMPLES_TLS
#include <skein/tls.hpp>
#endif

#include "cli.hpp"
#include "io_check.hpp"

#include <http_parser.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: fetch [--timeout S] [--cacert FILE] [--insecure] URL...\n"
    "\n"
    "Fetches every URL at once, one fiber each, with 'GET' over HTTP/1.1 and 'Connection: close'.\n"
    "Prints each response's status line and headers as they arrive, prefixed by the URL's index\n"
    "('[2] header > Content-Length: 19'), then a summary: status, body bytes and time per URL.\n"
    "URLs: http://HOST[:PORT][/PATH][?QUERY], and https:// the same (TLS: the server's certificate\n"
    "and name are verified against the system's CAs). Exits 1 if any fetch failed (no complete\n"
    "response, a refused certificate, or a status of 400 or more).\n"
    "\n"
    "  --timeout S    give up on a URL after S seconds (connect, handshake, request and response),\n"
    "                 0.001..3600; default 30\n"
    "  --cacert FILE  https: trust the CA certificates in FILE (PEM) instead of the system's\n"
    "  --insecure     https: accept any certificate and name (no verification)\n"
    "  -h, --help     show this help and exit\n";

struct Target {
  std::string url;
  std::string host;         // for the lookup: no brackets around an IPv6 literal
  std::string host_header;  // as the URL wrote it, with the port if it gave one
  std::uint16_t port = 80;
  std::string path;  // path and query
  bool tls = false;  // https://
};

// Parses an http:// URL, or exits with a usage error that says what is wrong with it.
Target parse_target(std::string_view url) {
  const auto bad = [url](std::string_view why) {
    cli::usage_error("bad URL '" + std::string(url) + "': " + std::string(why));
  };
  http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(url.data(), url.size(), 0, &u) != 0 || !(u.field_set & (1 << UF_SCHEMA)))
    bad("expected http[s]://HOST[:PORT][/PATH]");
  const auto field = [&](int f) { return url.substr(u.field_data[f].off, u.field_data[f].len); };
  std::string scheme(field(UF_SCHEMA));
  for (char& c : scheme) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
#if SKEIN_SAMPLES_TLS
  if (scheme != "http" && scheme != "https") bad("only http:// and https:// URLs are supported");
#else
  if (scheme == "https") bad("https is not supported: skein was built without TLS (http:// only)");
  if (scheme != "http") bad("only http:// URLs are supported");
#endif
  if (!(u.field_set & (1 << UF_HOST)) || u.field_data[UF_HOST].len == 0) bad("no host");
  if (u.field_set & (1 << UF_USERINFO)) bad("user names and passwords are not supported");

  Target t;
  t.url = url;
  t.host = field(UF_HOST);
  t.tls = scheme == "https";
  if (t.tls) t.port = 443;
  if (u.field_set & (1 << UF_PORT)) {
    if (u.port == 0) bad("port 0");
    t.port = u.port;
  }
  // The authority as written (an IPv6 literal keeps its brackets), for the Host header.
  const std::size_t authority = url.find("//") + 2;
  t.host_header = url.substr(authority, url.find_first_of("/?#", authority) - authority);
  t.path = (u.field_set & (1 << UF_PATH)) ? std::string(field(UF_PATH)) : "/";
  if (u.field_set & (1 << UF_QUERY)) t.path += "?" + std::string(field(UF_QUERY));
  return t;
}

struct Result {
  bool ok = false;
  int status = 0;  // 0 when no status line arrived
  std::string reason;
  std::uint64_t body_bytes = 0;
  double seconds = 0;
  std::string error;  // why it failed, when it did
};

// Reads one response with http_parser, printing the status line and each header line as soon as
// it is complete. Header names and values may arrive in any number of pieces.
class ResponseReader {
 public:
  explicit ResponseReader(std::size_t index) : index_(index) {
    http_parser_init(&parser_, HTTP_RESPONSE);
    parser_.data = this;
  }

  // Feeds `size` bytes (0: the stream ended); throws if the response is malformed.
  void feed(const char* data, std::size_t size) {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_status = [](http_parser* p, const char* at, std::size_t n) {
        self(p).reason_.append(at, n);
        return 0;
      };
      s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
        ResponseReader& r = self(p);
        if (r.in_value_) r.print_line();
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
        if (r.in_value_) r.print_line();
        return 0;
      };
      s.on_body = [](http_parser* p, const char*, std::size_t n) {
        self(p).body_bytes_ += n;
        return 0;
      };
      s.on_message_complete = [](http_parser* p) {
        self(p).complete_ = true;
        http_parser_pause(p, 1);  // a response ends here, whatever follows
        return 0;
      };
      return s;
    }();
    http_parser_execute(&parser_, &settings, data, size);
    const auto err = HTTP_PARSER_ERRNO(&parser_);
    if (err != HPE_OK && !(err == HPE_PAUSED && complete_))
      throw std::runtime_error(std::string("malformed response: ") + http_errno_description(err));
  }

  bool complete() const noexcept { return complete_; }
  int status() const noexcept { return status_printed_ ? static_cast<int>(parser_.status_code) : 0; }
  const std::string& reason() const noexcept { return reason_; }
  std::uint64_t body_bytes() const noexcept { return body_bytes_; }

 private:
  static ResponseReader& self(http_parser* p) { return *static_cast<ResponseReader*>(p->data); }

  void print_status_line() {
    if (status_printed_) return;
    status_printed_ = true;
    std::printf("[%zu] header > HTTP/%u.%u %u %s\n", index_, parser_.http_major, parser_.http_minor,
                parser_.status_code, reason_.c_str());
  }
  void print_line() {
    std::printf("[%zu] header > %s\n", index_, line_.c_str());
    line_.clear();
  }

  http_parser parser_;
  std::size_t index_;
  std::string reason_;
  std::string line_;  // the header line being gathered
  bool in_value_ = false;
  bool status_printed_ = false;
  bool complete_ = false;
  std::uint64_t body_bytes_ = 0;
};

// The https settings every fetch shares: one TLS context (its session cache too).
struct TlsSettings {
#if SKEIN_SAMPLES_TLS
  std::optional<skein::TlsContext> context;
#endif
};

Result fetch(std::size_t index, const Target& target, std::chrono::duration<double> timeout,
             [[maybe_unused]] const TlsSettings& tls) {
  const auto start = skein::Clock::now();
  const skein::Deadline deadline(timeout);
  Result result;
  ResponseReader reader(index);
  try {
    skein::Stream plain = skein::connect(target.host, target.port, deadline);
    std::printf("[%zu] connected to %s\n", index, plain.peer_address().to_string().c_str());
    // The request and the response are the same code over either stream (skein::StreamRef).
#if SKEIN_SAMPLES_TLS
    std::optional<skein::TlsStream> secure;
    if (target.tls) {
      secure.emplace(std::move(plain), *tls.context, target.host);
      secure->handshake(deadline);
      std::printf("[%zu] TLS %s %s, server %s\n", index, secure->version().c_str(), secure->cipher().c_str(),
                  secure->peer_subject().c_str());
    }
    const skein::StreamRef stream = secure ? skein::StreamRef(*secure) : skein::StreamRef(plain);
#else
    const skein::StreamRef stream(plain);
#endif
    const std::string request = "GET " + target.path + " HTTP/1.1\r\nHost: " + target.host_header +
                                "\r\nUser-Agent: skein-fetch\r\nAccept: */*\r\nConnection: close\r\n\r\n";
    stream.write_all(request, deadline);
    std::array<char, 16 * 1024> buffer;
    while (!reader.complete()) {
      const std::size_t n = stream.read(buffer, deadline);
      reader.feed(buffer.data(), n);  // n == 0 tells the parser the stream ended
      if (n == 0 && !reader.complete())
        throw std::runtime_error("the server closed the connection before the response was complete");
    }
    result.ok = reader.status() < 400;
    if (!result.ok) result.error = "HTTP status " + std::to_string(reader.status());
  } catch (const std::system_error& e) {
    result.error = e.code() == std::errc::timed_out
                       ? "timed out after " + std::to_string(timeout.count()).substr(0, 5) + " s"
                       : e.what();
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  result.status = reader.status();
  result.reason = reader.reason();
  result.body_bytes = reader.body_bytes();
  result.seconds = std::chrono::duration<double>(skein::Clock::now() - start).count();
  if (!result.ok) std::printf("[%zu] failed: %s\n", index, result.error.c_str());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "fetch";
  double timeout = 30.0;
  std::string_view cacert;
  bool insecure = false;
  std::vector<std::string_view> urls;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    const std::string_view arg = argv[i];
    if (cli::is_help(arg)) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--timeout", i, argc, argv, value)) {
      timeout = cli::number("--timeout", value, 0.001, 3600.0);
    } else if (cli::option("--cacert", i, argc, argv, value)) {
      cacert = value;
    } else if (arg == "--insecure") {
      insecure = true;
    } else if (arg.starts_with("-")) {
      cli::unknown_argument(arg);
    } else {
      urls.push_back(arg);
    }
  }
  if (urls.empty()) cli::usage_error("no URL given");
  std::vector<Target> targets;
  for (std::string_view url : urls) targets.push_back(parse_target(url));
  TlsSettings tls;
#if SKEIN_SAMPLES_TLS
  try {
    tls.context = skein::TlsContext::client();
    if (!cacert.empty()) tls.context->clear_trust().trust_ca_file(std::string(cacert));
    if (insecure) tls.context->disable_verification();
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "fetch: %s\n", e.what());
    return 1;
  }
#else
  if (!cacert.empty() || insecure) cli::usage_error("--cacert and --insecure need skein built with TLS");
#endif

  cli::check_io_backend();
  const auto start = skein::Clock::now();
  std::vector<Result> results;
  try {
    results = skein::run([&] {
      std::vector<skein::Task<Result>> tasks;
      for (std::size_t i = 0; i < targets.size(); ++i) {
        tasks.push_back(
            skein::spawn(skein::FiberOptions{"fetch-" + std::to_string(i + 1)}, [&targets, &tls, i, timeout] {
              return fetch(i + 1, targets[i], std::chrono::duration<double>(timeout), tls);
            }));
      }
      return skein::join_all(tasks);  // asyncio.wait: every fetch runs at once
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
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.ok)
      std::printf("  [%zu] %s  %d %s  %llu bytes  %.3f s\n", i + 1, targets[i].url.c_str(), r.status,
                  r.reason.c_str(), static_cast<unsigned long long>(r.body_bytes), r.seconds);
    else
      std::printf("  [%zu] %s  FAILED (%s)  %.3f s\n", i + 1, targets[i].url.c_str(), r.error.c_str(),
                  r.seconds);
    failed += r.ok ? 0 : 1;
    bytes += r.body_bytes;
    sum += r.seconds;
  }
  std::printf("%zu fetched, %zu failed, %llu bytes in %.3f s (the fetches one after another: %.3f s)\n",
              results.size() - failed, failed, static_cast<unsigned long long>(bytes), elapsed, sum);
  return failed == 0 ? 0 : 1;
}
