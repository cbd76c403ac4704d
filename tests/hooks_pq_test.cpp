// libpq (Debian's, unmodified) from fibers against a real PostgreSQL cluster this program creates in
// a temporary directory (initdb, then postgres on a free loopback port, as the `postgres` user when
// run as root) and stops by its pid: a query that a cancel, with_timeout or TimeoutScope
// interrupts leaves a broken connection, never one whose next query returns the interrupted one's
// rows. Exits 77 (a skip, for meson) only when PostgreSQL's server binaries are not installed.
#define DOCTEST_CONFIG_IMPLEMENT
#include "hooks_test_util.hpp"

#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>
#include <libpq-fe.h>

#include <pwd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

int pg_port = 0;

struct ConnFree {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using Conn = std::unique_ptr<PGconn, ConnFree>;

Conn connect_pg() {
  const std::string info = "hostaddr=127.0.0.1 port=" + std::to_string(pg_port) +
                           " user=skein dbname=postgres connect_timeout=10 sslmode=disable";
  return Conn(PQconnectdb(info.c_str()));
}

// What one query returned: the first value of its first row, or why there was none.
struct Outcome {
  bool rows = false;  // PGRES_TUPLES_OK
  std::string value;  // rows: the first value; otherwise the error message
};

Outcome query(PGconn* c, const char* sql) {
  Outcome o;
  PGresult* r = PQexec(c, sql);
  if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) {
    o.rows = true;
    o.value = PQgetvalue(r, 0, 0);
  } else {
    o.value = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
  }
  PQclear(r);
  return o;
}

// The query that is interrupted: its reply ("slept") comes 500 ms later, far enough past the
// interruption that a fiber resumed late on a loaded machine does not find it already there (it
// would then be the call's answer).
constexpr const char* slow = "SELECT 'slept' FROM pg_sleep(0.5)";

// Runs `slow` on `c`, interrupted `way` after 50 ms.
Outcome interrupted_query(PGconn* c, hooks_test::Way way) {
  Outcome o;
  hooks_test::interrupt_after_50ms(way, [&] { o = query(c, slow); });
  return o;
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE(
      "libpq: a query a cancel, with_timeout or TimeoutScope interrupts breaks the connection; no later "
      "query gets its rows") {
    skein::run([] {
      for (const hooks_test::Way way :
           {hooks_test::Way::cancel, hooks_test::Way::with_timeout, hooks_test::Way::timeout_scope}) {
        CAPTURE(static_cast<int>(way));
        Conn c = connect_pg();
        REQUIRE(PQstatus(c.get()) == CONNECTION_OK);
        const Outcome interrupted = interrupted_query(c.get(), way);
        CAPTURE(interrupted.value);
        CHECK(!interrupted.rows);  // it did not run to its end
        // Wait for the late reply: were the connection kept, the next query would read it.
        skein::sleep_for(550ms);
        const Outcome next = query(c.get(), "SELECT 42");
        const Outcome after = query(c.get(), "SELECT 43");
        CAPTURE(next.value);
        CAPTURE(after.value);
        CHECK(!next.rows);
        CHECK(!after.rows);
        CHECK(PQstatus(c.get()) == CONNECTION_BAD);
        // A new connection works as ever.
        Conn fresh = connect_pg();
        REQUIRE(PQstatus(fresh.get()) == CONNECTION_OK);
        const Outcome ok = query(fresh.get(), "SELECT 42");
        CHECK(ok.rows);
        CHECK(ok.value == "42");
      }
    });
  }

  TEST_CASE(
      "libpq: with keep_after_interrupt the connection stays 'healthy' and answers each query with the "
      "previous one's rows") {
    skein::run([] {
      Conn c = connect_pg();
      REQUIRE(PQstatus(c.get()) == CONNECTION_OK);
      skein::hooks::keep_after_interrupt(PQsocket(c.get()));
      CHECK(!interrupted_query(c.get(), hooks_test::Way::cancel).rows);
      CHECK(PQstatus(c.get()) == CONNECTION_OK);
      // What the rule prevents (the program is on its own with this connection): the late reply
      // is taken for the next query's. What the one after gets depends on timing.
      const Outcome next = query(c.get(), "SELECT 42");
      CHECK(next.rows);
      CHECK(next.value == "slept");
    });
  }
}

namespace {

// Runs argv to completion (as `uid`/`gid` when set); true if it exited 0 within `limit`.
bool run_to_end(const std::vector<std::string>& argv, uid_t uid, gid_t gid, std::chrono::seconds limit) {
  hooks_test::Child child(argv, false, uid, gid);
  const int status = child.reap(limit);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The directory of PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<version>/bin), the
// newest installed, or "".
std::string pg_bindir() {
  std::string best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& d : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string bin = d.path().string() + "/bin";
    const int version = std::atoi(d.path().filename().c_str());
    if (version > best_version && access((bin + "/initdb").c_str(), X_OK) == 0 &&
        access((bin + "/postgres").c_str(), X_OK) == 0) {
      best = bin;
      best_version = version;
    }
  }
  if (best.empty()) {
    const std::string initdb = hooks_test::find_program("initdb");
    if (!initdb.empty()) best = std::filesystem::path(initdb).parent_path().string();
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string bin = pg_bindir();
  if (bin.empty()) {
    std::printf(
        "SKIP: PostgreSQL's server is not installed (Debian: postgresql; scripts/deps installs it)\n");
    return 77;
  }
  // PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` user.
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (geteuid() == 0) {
    const passwd* pw = getpwnam("postgres");
    if (!pw) {
      std::fprintf(stderr, "running as root and there is no postgres user to run PostgreSQL as\n");
      return 1;
    }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  char tmpl[] = "/tmp/skein-pg-XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = tmpl;
  const std::string data = dir + "/data";
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir};
  if (uid != static_cast<uid_t>(-1) && chown(dir.c_str(), uid, gid) != 0) {
    std::perror("chown");
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  if (!run_to_end({bin + "/initdb", "-D", data, "-U", "skein", "-A", "trust", "-E", "UTF8", "--locale=C",
                   "--no-sync", "--no-instructions"},
                  uid, gid, std::chrono::seconds(120))) {
    std::fprintf(stderr, "initdb failed\n");
    return 1;
  }
  std::optional<hooks_test::Child> server;
  for (int attempt = 0; attempt < 3 && !server; ++attempt) {
    pg_port = hooks_test::free_port();
    server.emplace(std::vector<std::string>{bin + "/postgres", "-D", data, "-p", std::to_string(pg_port),
                                            "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                            "-c", "shared_buffers=16MB", "-c", "max_connections=20"},
                   false, uid, gid);
    if (!hooks_test::wait_listening(pg_port, std::chrono::seconds(20))) server.reset();
  }
  if (!server) {
    std::fprintf(stderr, "postgres did not start\n");
    return 1;
  }
  // Listening comes before accepting queries: wait until a connection succeeds.
  bool ready = false;
  for (int i = 0; i < 200 && !ready; ++i) {
    ready = PQstatus(connect_pg().get()) == CONNECTION_OK;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ready) {
    std::fprintf(stderr, "postgres does not accept connections\n");
    return 1;
  }
  std::printf("postgres pid %d on 127.0.0.1:%d, up in %.2f s\n%s\n", static_cast<int>(server->pid()), pg_port,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
              skein::hooks::describe().c_str());
  doctest::Context context(argc, argv);
  const int result = context.run();
  server->stop();
  return result;
}
