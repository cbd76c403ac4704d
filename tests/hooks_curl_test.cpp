// libcurl (Debian's libcurl4-openssl, the easy API, unmodified) from 100 fibers at once, against
// samples/http_server started by this program (HOOKS_HTTP_SERVER, with --delay-ms) and stopped by
// its pid: the fetches overlap, so the batch takes about one delay, not a hundred.
#define DOCTEST_CONFIG_IMPLEMENT
#include "hooks_test_util.hpp"

#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <curl/curl.h>
#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

namespace {

std::string base_url;
constexpr int delay_ms = 300;

double seconds_since(skein::TimePoint start) {
  return std::chrono::duration<double>(skein::Clock::now() - start).count();
}

std::size_t append(char* data, std::size_t size, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// GETs `url` with a fresh easy handle; "" on success with the body in `body`, else the error.
std::string fetch(const std::string& url, std::string& body, long& status) {
  CURL* curl = curl_easy_init();
  if (!curl) return "curl_easy_init failed";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM-based timeouts: threads and fibers
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20'000L);
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  return rc == CURLE_OK ? "" : curl_easy_strerror(rc);
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE("libcurl: 100 fibers fetch at once from a server that delays each reply; they overlap") {
    constexpr int fibers = 100;
    double took = 0;
    skein::run([&] {
      const auto start = skein::Clock::now();
      std::vector<skein::Task<std::string>> tasks;
      for (int i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn([i]() -> std::string {
          std::string body;
          long status = 0;
          const std::string name = "fiber" + std::to_string(i);
          const std::string err = fetch(base_url + "/" + name, body, status);
          if (!err.empty()) return err;
          if (status != 200) return "status " + std::to_string(status);
          if (body != "<h1>Hello, " + name + "</h1>") return "wrong body: " + body;
          return "";
        }));
      for (auto& t : tasks) CHECK(t.join() == "");
      took = seconds_since(start);
    });
    MESSAGE("100 fetches with a " << delay_ms << " ms server delay in fibers: " << took
                                  << " s (serially: " << fibers * delay_ms / 1000.0 << " s)");
    CHECK(took >= delay_ms / 1000.0 * 0.95);
    CHECK(took < 3.0);
  }

  TEST_CASE("libcurl: outside a fiber the same call blocks the thread and works as without the hooks") {
    std::string body;
    long status = 0;
    const auto start = skein::Clock::now();
    CHECK(fetch(base_url + "/plain", body, status) == "");
    CHECK(status == 200);
    CHECK(body == "<h1>Hello, plain</h1>");
    CHECK(seconds_since(start) >= delay_ms / 1000.0 * 0.95);
  }

  TEST_CASE("libcurl: a fetch cancelled while it waits for the reply fails, then the fiber sees the cancel") {
    skein::run([] {
      std::string err;
      bool next_wait_cancelled = false;
      auto task = skein::spawn([&] {
        std::string body;
        long status = 0;
        err = fetch(base_url + "/cancelled", body, status);
        try {
          skein::sleep_for(std::chrono::milliseconds(1));
        } catch (const std::system_error& e) {
          next_wait_cancelled = e.code() == std::errc::operation_canceled;
          throw;
        }
      });
      skein::sleep_for(std::chrono::milliseconds(delay_ms / 3));  // the request is out, no reply yet
      const auto cancelled_at = skein::Clock::now();
      task.cancel();
      CHECK_THROWS(task.join());
      CHECK(seconds_since(cancelled_at) < delay_ms / 1000.0 / 2);  // not held until the reply
      // No reply had begun: the hooks shut the connection down and curl reads its end.
      CHECK(err == curl_easy_strerror(CURLE_GOT_NOTHING));
      MESSAGE("cancelled fetch: " << err);
      CHECK(next_wait_cancelled);
    });
  }

  TEST_CASE("libcurl: a refused connection is reported, in a fiber") {
    skein::run([] {
      std::string body;
      long status = 0;
      const std::string url = "http://127.0.0.1:" + std::to_string(hooks_test::free_port()) + "/";
      CHECK(fetch(url, body, status) == curl_easy_strerror(CURLE_COULDNT_CONNECT));
    });
  }
}

int main(int argc, char** argv) {
  const char* server_exe = std::getenv("HOOKS_HTTP_SERVER");
  if (!server_exe) {
    std::fprintf(stderr, "HOOKS_HTTP_SERVER (samples/http_server) is not set\n");
    return 1;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;  // once, before any thread
  hooks_test::Child server(
      {server_exe, "--host", "127.0.0.1", "--port", "0", "--delay-ms", std::to_string(delay_ms)}, true);
  const auto line = server.line(std::chrono::seconds(10));
  std::smatch m;
  static const std::regex listening("listening on (\\S+):(\\d+)");
  if (!line || !std::regex_match(*line, m, listening)) {
    std::fprintf(stderr, "http_server did not start: %s\n", line ? line->c_str() : "(no output)");
    return 1;
  }
  base_url = "http://127.0.0.1:" + m[2].str();
  std::printf("http_server pid %d at %s\n%s\n", static_cast<int>(server.pid()), base_url.c_str(),
              skein::hooks::describe().c_str());
  doctest::Context context(argc, argv);
  const int result = context.run();
  server.stop();
  curl_global_cleanup();
  return result;
}
