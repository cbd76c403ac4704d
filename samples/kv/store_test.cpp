// store_test.cpp: unit tests of Store (doctest, suite 'samples'): the operations, expiry (lazy
// and swept) on a clock the test moves, and several threads at once.

#include <doctest/doctest.h>

#include "store.hpp"

#include <atomic>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using skein_samples::kv::Store;

namespace {

std::int64_t g_now = 1'000'000;
std::int64_t fake_clock() {
  return g_now;
}

std::optional<std::string> get(Store& s, std::string_view key) {
  std::optional<std::string> out;
  s.get(key, [&](std::string_view v) { out = std::string(v); });
  return out;
}

Store::SetOptions expiring_at(std::int64_t at) {
  Store::SetOptions o;
  o.expires_at = at;
  return o;
}

}  // namespace

TEST_CASE("set, get, overwrite, del, exists") {
  Store s(&fake_clock);
  CHECK(get(s, "a") == std::nullopt);
  CHECK(s.set("a", "1"));
  CHECK(get(s, "a") == "1");
  CHECK(s.set("a", std::string(10000, 'x')));
  CHECK(s.set("a", "2"));  // a much shorter value after a long one
  CHECK(get(s, "a") == "2");
  CHECK(s.set("", ""));
  CHECK(get(s, "") == "");
  CHECK(s.size() == 2);
  const std::string_view keys[] = {"a", "a", "b", ""};
  CHECK(s.exists(keys) == 3);
  CHECK(s.del(keys) == 2);  // "a" counted once: the second is gone by then
  CHECK(s.size() == 0);
  CHECK(s.exists(keys) == 0);
}

TEST_CASE("set conditions, KEEPTTL and the old value") {
  Store s(&fake_clock);
  Store::SetOptions nx;
  nx.condition = Store::Condition::if_absent;
  Store::SetOptions xx;
  xx.condition = Store::Condition::if_present;
  CHECK_FALSE(s.set("k", "v", xx));
  CHECK(get(s, "k") == std::nullopt);
  CHECK(s.set("k", "v", nx));
  CHECK_FALSE(s.set("k", "w", nx));
  CHECK(get(s, "k") == "v");
  CHECK(s.set("k", "w", xx));
  CHECK(get(s, "k") == "w");

  CHECK(s.set("t", "1", expiring_at(g_now + 5000)));
  Store::SetOptions keep;
  keep.keep_ttl = true;
  CHECK(s.set("t", "2", keep));
  CHECK(s.ttl_ms("t") == 5000);
  CHECK(s.set("t", "3"));  // a plain SET clears the deadline
  CHECK(s.ttl_ms("t") == -1);

  std::vector<std::optional<std::string>> seen;
  std::function<void(std::optional<std::string_view>)> old = [&](std::optional<std::string_view> v) {
    seen.push_back(v ? std::optional<std::string>(std::string(*v)) : std::nullopt);
  };
  Store::SetOptions get_old;
  get_old.old_value = &old;
  CHECK(s.set("g", "1", get_old));
  CHECK(s.set("g", "2", get_old));
  CHECK(seen == std::vector<std::optional<std::string>>{std::nullopt, "1"});
}

TEST_CASE("incr_by") {
  Store s(&fake_clock);
  std::int64_t v = 0;
  CHECK(s.incr_by("n", 1, v) == Store::IncrResult::ok);
  CHECK(v == 1);
  CHECK(s.incr_by("n", -11, v) == Store::IncrResult::ok);
  CHECK(v == -10);
  CHECK(get(s, "n") == "-10");
  s.set("big", "9223372036854775806");
  CHECK(s.incr_by("big", 1, v) == Store::IncrResult::ok);
  CHECK(v == INT64_MAX);
  CHECK(s.incr_by("big", 1, v) == Store::IncrResult::overflow);
  CHECK(get(s, "big") == "9223372036854775807");  // unchanged
  s.set("small", "-9223372036854775808");
  CHECK(s.incr_by("small", -1, v) == Store::IncrResult::overflow);
  for (const char* bad : {"abc", "", " 1", "1 ", "01", "+1", "1.0", "99999999999999999999"}) {
    CAPTURE(bad);
    s.set("x", bad);
    CHECK(s.incr_by("x", 1, v) == Store::IncrResult::not_integer);
    CHECK(get(s, "x") == bad);
  }
  // The deadline stays.
  s.set("e", "5", expiring_at(g_now + 1000));
  CHECK(s.incr_by("e", 1, v) == Store::IncrResult::ok);
  CHECK(s.ttl_ms("e") == 1000);
}

TEST_CASE("mget and mset") {
  Store s(&fake_clock);
  const std::string_view pairs[] = {"a", "1", "b", "2", "a", "3"};
  s.mset(pairs);
  CHECK(get(s, "a") == "3");  // the last one wins
  const std::string_view keys[] = {"a", "missing", "b", "a"};
  std::vector<std::optional<std::string>> got;
  s.mget(keys, [&](std::size_t i, std::optional<std::string_view> v) {
    CHECK(i == got.size());
    got.push_back(v ? std::optional<std::string>(std::string(*v)) : std::nullopt);
  });
  CHECK(got == std::vector<std::optional<std::string>>{"3", std::nullopt, "2", "3"});
  // MSET clears deadlines.
  s.set("t", "x", expiring_at(g_now + 10));
  const std::string_view t[] = {"t", "y"};
  s.mset(t);
  CHECK(s.ttl_ms("t") == -1);
}

TEST_CASE("lazy expiry: an expired key is never seen") {
  g_now = 1'000'000;
  Store s(&fake_clock);
  s.set("k", "v", expiring_at(g_now + 100));
  s.set("p", "v");
  CHECK(s.ttl_ms("k") == 100);
  CHECK(s.ttl_ms("p") == -1);
  CHECK(s.ttl_ms("nope") == -2);
  g_now += 99;
  CHECK(get(s, "k") == "v");
  CHECK(s.ttl_ms("k") == 1);
  g_now += 1;
  CHECK(s.size() == 2);  // expired, not reclaimed yet: counted, as Redis's DBSIZE does
  CHECK(get(s, "k") == std::nullopt);
  CHECK(s.size() == 1);  // reclaimed by the access
  CHECK(s.ttl_ms("k") == -2);

  // Every kind of access treats it as gone.
  const std::string_view k[] = {"k"};
  std::int64_t v = 0;
  s.set("k", "5", expiring_at(g_now + 1));
  g_now += 1;
  CHECK(s.exists(k) == 0);
  s.set("k", "5", expiring_at(g_now + 1));
  g_now += 1;
  CHECK(s.del(k) == 0);
  s.set("k", "5", expiring_at(g_now + 1));
  g_now += 1;
  CHECK(s.incr_by("k", 1, v) == Store::IncrResult::ok);
  CHECK(v == 1);  // from nothing, and with no deadline
  CHECK(s.ttl_ms("k") == -1);
  s.set("k", "5", expiring_at(g_now + 1));
  g_now += 1;
  Store::SetOptions nx;
  nx.condition = Store::Condition::if_absent;
  CHECK(s.set("k", "new", nx));
  CHECK(!s.persist("k"));
  CHECK(!s.expire_at("nope", g_now + 10));
}

TEST_CASE("expire_at, its conditions, persist") {
  g_now = 1'000'000;
  Store s(&fake_clock);
  using C = Store::ExpireCondition;
  s.set("k", "v");
  CHECK_FALSE(s.expire_at("k", g_now + 100, C::xx));  // no deadline yet
  CHECK_FALSE(s.expire_at("k", g_now + 100, C::gt));  // none counts as forever
  CHECK(s.expire_at("k", g_now + 100, C::nx));
  CHECK_FALSE(s.expire_at("k", g_now + 200, C::nx));
  CHECK(s.expire_at("k", g_now + 200, C::gt));
  CHECK_FALSE(s.expire_at("k", g_now + 150, C::gt));
  CHECK(s.expire_at("k", g_now + 150, C::lt));
  CHECK(s.ttl_ms("k") == 150);
  CHECK(s.persist("k"));
  CHECK_FALSE(s.persist("k"));
  CHECK(s.ttl_ms("k") == -1);
  CHECK(s.expire_at("k", g_now + 50, C::lt));  // none counts as forever
  // A deadline not in the future deletes the key, and counts as done.
  CHECK(s.expire_at("k", g_now, C::always));
  CHECK(s.ttl_ms("k") == -2);
  CHECK(s.size() == 0);
}

TEST_CASE("expire_at's conditions combine: XX with GT or LT") {
  g_now = 1'000'000;
  Store s(&fake_clock);
  using C = Store::ExpireCondition;
  s.set("k", "v");
  CHECK_FALSE(s.expire_at("k", g_now + 100, C::xx | C::lt));  // XX fails: no deadline
  CHECK(s.expire_at("k", g_now + 100));
  CHECK_FALSE(s.expire_at("k", g_now + 50, C::xx | C::gt));  // GT fails
  CHECK(s.expire_at("k", g_now + 150, C::gt | C::xx));
  CHECK_FALSE(s.expire_at("k", g_now + 200, C::xx | C::lt));
  CHECK(s.expire_at("k", g_now + 120, C::lt | C::xx));
  CHECK(s.ttl_ms("k") == 120);
}

TEST_CASE("glob_match follows Redis's stringmatchlen") {
  using skein_samples::kv::glob_match;
  CHECK_FALSE(glob_match("*", ""));  // as in Redis, where KEYS * and MATCH * skip the match
  CHECK(glob_match("a*", "abc"));
  CHECK_FALSE(glob_match("a*", "bac"));
  CHECK(glob_match("h?llo", "hello"));
  CHECK_FALSE(glob_match("h?llo", "hllo"));
  CHECK(glob_match("h[ae]llo", "hallo"));
  CHECK_FALSE(glob_match("h[ae]llo", "hillo"));
  CHECK(glob_match("h[^e]llo", "hallo"));
  CHECK_FALSE(glob_match("h[^e]llo", "hello"));
  CHECK(glob_match("h[a-b]llo", "hbllo"));
  CHECK(glob_match("h[b-a]llo", "hallo"));  // a reversed range still matches
  CHECK(glob_match("\\*", "*"));
  CHECK_FALSE(glob_match("\\*", "a"));
  CHECK(glob_match("[\\]]", "]"));
  CHECK(glob_match("\\d", "d"));
  CHECK(glob_match("[a-", "a"));  // an unclosed class ends with the pattern
  CHECK(glob_match("[a-", "-"));
  CHECK_FALSE(glob_match("[]", "a"));
  CHECK(glob_match("a*b*c", "aXbYc"));
  CHECK_FALSE(glob_match("a*a*a*a*a*a*a*a*a*a*b", std::string(5000, 'a')));  // quickly
  CHECK(glob_match(std::string_view("a\0b", 3), std::string_view("a\0b", 3)));
}

TEST_CASE("scan walks every key exactly once; rename, copy, msetnx, random_key") {
  g_now = 1'000'000;
  Store s(&fake_clock);
  std::set<std::string> all;
  for (int i = 0; i < 3000; ++i) {
    s.set("key" + std::to_string(i), "v");
    all.insert("key" + std::to_string(i));
  }
  for (const std::size_t count : {std::size_t{1}, std::size_t{10}, std::size_t{1000}}) {
    std::multiset<std::string> seen;
    std::uint64_t cursor = 0;
    int calls = 0;
    do {
      cursor = s.scan(cursor, count, [&](std::string_view k) { seen.emplace(k); });
      ++calls;
    } while (cursor != 0 && calls < 100000);
    CHECK(cursor == 0);
    CHECK(seen.size() == all.size());
    CHECK(std::set<std::string>(seen.begin(), seen.end()) == all);
  }
  std::size_t matched = 0;
  s.keys("key1??", [&](std::string_view) { ++matched; });
  CHECK(matched == 100);

  CHECK(s.rename("key1", "moved", false) == Store::RenameResult::ok);
  CHECK(s.rename("key1", "moved", false) == Store::RenameResult::no_such_key);
  CHECK(s.rename("moved", "key2", true) == Store::RenameResult::target_exists);
  CHECK(s.expire_at("moved", g_now + 500));
  CHECK(s.copy("moved", "copied", false));
  CHECK_FALSE(s.copy("moved", "copied", false));
  CHECK(s.ttl_ms("copied") == 500);
  CHECK(s.with_deadline() == 2);
  CHECK_FALSE(s.msetnx(std::vector<std::string_view>{"fresh", "1", "key2", "2"}));
  CHECK_FALSE(s.exists(std::vector<std::string_view>{"fresh"}));
  CHECK(s.msetnx(std::vector<std::string_view>{"fresh", "1", "fresh2", "2"}));
  std::string key;
  CHECK(s.random_key(key));
  CHECK(s.exists(std::vector<std::string_view>{key}) == 1);
  s.clear();
  CHECK_FALSE(s.random_key(key));
}

TEST_CASE("sweep reclaims expired keys nobody reads, with bounded work per call") {
  g_now = 1'000'000;
  Store s(&fake_clock);
  for (int i = 0; i < 5000; ++i) s.set("e" + std::to_string(i), "v", expiring_at(g_now + 10));
  for (int i = 0; i < 1000; ++i) s.set("p" + std::to_string(i), "v");
  CHECK(s.sweep() == 0);  // nothing has expired
  CHECK(s.size() == 6000);
  g_now += 10;
  std::size_t removed = 0;
  int calls = 0;
  while (s.size() > 1000 && calls < 1000) {
    const std::size_t n = s.sweep(4);
    CHECK(n <= Store::kShards * 4 * 16 * 8);  // bounded: a few entries per bucket at most
    removed += n;
    ++calls;
  }
  CHECK(removed == 5000);
  CHECK(s.size() == 1000);
  CHECK(calls > 1);  // it took several bounded calls, not one full scan
  CHECK(get(s, "p999") == "v");
  CHECK(s.sweep() == 0);
}

TEST_CASE("clear") {
  Store s(&fake_clock);
  for (int i = 0; i < 1000; ++i) s.set(std::to_string(i), "v", expiring_at(i % 2 ? g_now + 10 : 0));
  s.clear();
  CHECK(s.size() == 0);
  CHECK(get(s, "1") == std::nullopt);
  g_now += 10;
  CHECK(s.sweep() == 0);
  s.set("after", "x");
  CHECK(s.size() == 1);
}

TEST_CASE("threads: every increment counts, and MSET is atomic to MGET") {
  Store s;  // the real clock
  constexpr int kThreads = 4;
  constexpr int kIncrements = 20000;
  std::atomic<bool> torn{false};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&s, t] {
      std::int64_t v = 0;
      const std::string mine = "own" + std::to_string(t);
      for (int i = 0; i < kIncrements; ++i) {
        s.incr_by("shared", 1, v);
        s.incr_by(mine, 1, v);
        if (i % 100 == 0) {
          const std::string_view k[] = {mine};
          s.exists(k);
          s.set("scratch" + std::to_string(i % 7), std::to_string(i));
        }
      }
    });
  }
  // Keys chosen to fall in different shards; a writer keeps them equal, a reader checks.
  std::thread writer([&] {
    for (int i = 0; !stop; ++i) {
      const std::string v = std::to_string(i);
      const std::string_view pairs[] = {"pair-a", v, "pair-b", v, "pair-c", v};
      s.mset(pairs);
    }
  });
  std::thread reader([&] {
    const std::string_view keys[] = {"pair-c", "pair-a", "pair-b"};
    while (!stop) {
      std::optional<std::string> seen[3];
      s.mget(keys, [&](std::size_t i, std::optional<std::string_view> v) {
        if (v) seen[i] = std::string(*v);
      });
      if (seen[0] != seen[1] || seen[1] != seen[2]) torn = true;
    }
  });
  for (auto& t : threads) t.join();
  stop = true;
  writer.join();
  reader.join();
  CHECK_FALSE(torn);
  std::optional<std::string> total;
  s.get("shared", [&](std::string_view v) { total = std::string(v); });
  CHECK(total == std::to_string(kThreads * kIncrements));
  for (int t = 0; t < kThreads; ++t) {
    s.get("own" + std::to_string(t), [&](std::string_view v) { CHECK(v == std::to_string(kIncrements)); });
  }
}
