// skein::debug: the fiber records (wait reasons with their detail and duration, parents, spawn
// sites, states, cancellation), snapshots from fibers and plain threads while workers run, the
// dump's grouping, and the workers' counters.
//
// A fiber is "parked" for a check once it has announced itself (an atomic bumped just before its
// wait) and a few yields have passed; snapshots are retried for up to 5 s until every expected
// fiber shows the expected state, so a slow machine delays a case instead of failing it.
#include "sanitizers.hpp"

#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using skein::debug::FiberInfo;
using skein::debug::FiberState;
using skein::debug::WaitReason;

using skein_test::under_tsan;

std::optional<FiberInfo> find(const std::vector<FiberInfo>& all, std::uint64_t id) {
  for (const auto& f : all)
    if (f.id == id) return f;
  return std::nullopt;
}

// Snapshots until `ready(all)` holds (up to 5 s) and returns the last snapshot.
std::vector<FiberInfo> snapshot_when(const std::function<bool(const std::vector<FiberInfo>&)>& ready) {
  const auto until = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    std::vector<FiberInfo> all = skein::debug::fibers();
    if (ready(all) || std::chrono::steady_clock::now() > until) return all;
    if (skein::in_fiber())
      skein::sleep_for(1ms);
    else
      std::this_thread::sleep_for(1ms);
  }
}

bool all_parked(const std::vector<FiberInfo>& all, const std::vector<std::uint64_t>& ids) {
  return std::all_of(ids.begin(), ids.end(), [&](std::uint64_t id) {
    const auto f = find(all, id);
    return f && f->state == FiberState::parked;
  });
}

std::uintptr_t address(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

}  // namespace

TEST_SUITE("debug") {
  TEST_CASE(
      "a fiber parked in each runtime primitive records that primitive, what it waits on and since when") {
    skein::run([] {
      skein::Channel<int> recv_ch, send_ch;
      skein::Channel<int> sel_a, sel_b;
      skein::Mutex mutex, cv_mutex;
      skein::ConditionVariable cv;
      skein::Event event, join_target_event;
      skein::Semaphore semaphore(0);
      skein::WaitGroup group;
      group.add(1);
      skein::Barrier barrier(2);
      skein::Promise<int> promise;
      skein::Future<int> future = promise.get_future();
      std::unique_lock held(mutex);

      std::vector<skein::Task<void>> tasks;
      std::map<std::string, std::pair<WaitReason, std::uintptr_t>> expected;
      std::map<std::string, std::uint64_t> ids;
      auto add = [&](const char* name, WaitReason reason, std::uintptr_t detail, auto body) {
        tasks.push_back(skein::spawn(skein::FiberOptions{name}, std::move(body)));
        expected[name] = {reason, detail};
        ids[name] = tasks.back().id();
      };
      add("sleep", WaitReason::sleep, 0, [] { skein::sleep_for(1h); });
      add("recv", WaitReason::channel_recv, address(&recv_ch), [&] { recv_ch.recv(); });
      add("send", WaitReason::channel_send, address(&send_ch), [&] { send_ch.send(1); });
      add("select", WaitReason::select, 2,
          [&] { skein::select(skein::on_recv(sel_a), skein::on_recv(sel_b)); });
      add("mutex", WaitReason::mutex, address(&mutex), [&] { std::lock_guard g(mutex); });
      add("condvar", WaitReason::condvar, address(&cv), [&] {
        std::unique_lock lock(cv_mutex);
        cv.wait(lock);
      });
      add("event", WaitReason::event, address(&event), [&] { event.wait(); });
      add("semaphore", WaitReason::semaphore, address(&semaphore), [&] { semaphore.acquire(); });
      add("wait group", WaitReason::wait_group, address(&group), [&] { group.wait(); });
      add("barrier", WaitReason::barrier, address(&barrier), [&] { barrier.arrive_and_wait(); });
      // The future's detail is its shared state, which the test cannot name: checked as non-zero.
      add("future", WaitReason::future, 0, [&] { future.wait(); });
      auto target = skein::spawn(skein::FiberOptions{"join target"}, [&] { join_target_event.wait(); });
      add("join", WaitReason::join, target.id(), [&] { target.wait(); });

      std::vector<std::uint64_t> all_ids;
      for (const auto& [name, id] : ids) all_ids.push_back(id);
      const auto all = snapshot_when([&](const auto& s) { return all_parked(s, all_ids); });
      for (const auto& [name, want] : expected) {
        CAPTURE(name);
        const auto f = find(all, ids[name]);
        REQUIRE(f);
        CHECK(f->state == FiberState::parked);
        CHECK(f->name == name);
        CHECK(f->reason == want.first);
        if (name == "future")
          CHECK(f->detail != 0);
        else
          CHECK(f->detail == want.second);
        CHECK(f->waiting >= 0ns);
        CHECK(f->waiting < 1h);
        CHECK(f->worker == 0);
        CHECK(f->stack_size >= skein::default_stack_size);
      }
      // Only the timed wait has a deadline.
      CHECK(find(all, ids["sleep"])->deadline.has_value());
      CHECK(*find(all, ids["sleep"])->deadline > 30min);
      CHECK_FALSE(find(all, ids["recv"])->deadline.has_value());
      // The caller is running, with no reason.
      const auto self = find(all, skein::this_fiber::id());
      REQUIRE(self);
      CHECK(self->state == FiberState::running);
      CHECK(self->reason == WaitReason::none);
      CHECK(self->name == "main");

      // Wait times grow while the fibers stay parked (the coarse clock ticks every few ms).
      skein::sleep_for(30ms);
      const auto later = skein::debug::fibers();
      CHECK(find(later, ids["event"])->waiting >= find(all, ids["event"])->waiting + 10ms);

      for (auto& t : tasks) t.cancel();
      target.cancel();
      held.unlock();
      for (auto& t : tasks) t.wait();
      target.wait();
    });
  }

  TEST_CASE(
      "records appear at spawn, show ready, running and cancel requests, and vanish when the fiber ends") {
    skein::run([] {
      skein::Event go;
      auto t = skein::spawn(skein::FiberOptions{"short"}, [&] { go.wait(); });
      auto cancelled = skein::spawn(skein::FiberOptions{"cancelled"}, [] {});
      cancelled.cancel();
      auto before = skein::debug::fibers();
      REQUIRE(find(before, t.id()));
      CHECK(find(before, t.id())->state == FiberState::ready);
      CHECK(find(before, cancelled.id())->cancel_requested);
      CHECK_FALSE(find(before, t.id())->cancel_requested);
      skein::yield();
      auto parked = snapshot_when([&](const auto& s) { return all_parked(s, {t.id()}); });
      CHECK(find(parked, t.id())->reason == WaitReason::event);
      CHECK_FALSE(find(parked, cancelled.id()));  // it ended (skipping its body)
      go.set();
      const std::uint64_t id = t.id();
      t.join();
      CHECK_FALSE(find(skein::debug::fibers(), id));
      CHECK(skein::debug::fibers().size() == 1);  // main alone
    });
    // No runtime left: nothing to report, from a plain thread.
    CHECK(skein::debug::fibers().empty());
  }

  TEST_CASE("a record names its parent fiber and the file and line of its spawn call") {
    skein::run([] {
      const std::uint64_t main_id = skein::this_fiber::id();
      skein::Event done;
      std::uint64_t child_id = 0, grandchild_id = 0;
      int grandchild_line = 0;
      const int child_line = __LINE__ + 1;
      auto child = skein::spawn(skein::FiberOptions{"child"}, [&] {
        grandchild_line = __LINE__ + 1;
        auto grandchild = skein::spawn([&] { done.wait(); });
        grandchild_id = grandchild.id();
        grandchild.join();
      });
      child_id = child.id();
      const auto all =
          snapshot_when([&](const auto& s) { return grandchild_id && all_parked(s, {grandchild_id}); });
      const auto c = find(all, child_id);
      const auto g = find(all, grandchild_id);
      REQUIRE(c);
      REQUIRE(g);
      CHECK(c->parent == main_id);
      CHECK(g->parent == child_id);
      CHECK(std::strstr(c->spawned_at.file_name(), "debug_test.cpp"));
      CHECK(c->spawned_at.line() == static_cast<unsigned>(child_line));
      CHECK(g->spawned_at.line() == static_cast<unsigned>(grandchild_line));
      CHECK(c->reason == WaitReason::join);
      CHECK(c->detail == grandchild_id);
      const auto m = find(all, main_id);
      REQUIRE(m);
      CHECK(m->parent == 0);  // run() spawned it from the plain thread
      CHECK(std::strstr(m->spawned_at.file_name(), "debug_test.cpp") != nullptr);  // the run() call

      // The spawn tree prints the grandchild under the child under main.
      std::ostringstream out;
      skein::debug::dump(out, {.tree = true});
      const std::string text = out.str();
      const auto tree = text.find("spawn tree:");
      REQUIRE(tree != std::string::npos);
      const auto main_at = text.find("\n  #" + std::to_string(main_id) + " \"main\"", tree);
      const auto child_at = text.find("\n    #" + std::to_string(child_id) + " \"child\"", tree);
      const auto grand_at = text.find("\n      #" + std::to_string(grandchild_id) + " parked: event", tree);
      CHECK(main_at != std::string::npos);
      CHECK(child_at != std::string::npos);
      CHECK(grand_at != std::string::npos);
      CHECK(main_at < child_at);
      CHECK(child_at < grand_at);
      done.set();
      child.join();
    });
  }

  TEST_CASE(
      "a plain thread snapshots four running workers: every worker answers, parked fibers show their "
      "reason") {
    skein::Runtime rt(skein::RuntimeOptions{4});
    std::atomic<bool> stop{false};
    skein::Event release;
    std::vector<skein::Task<void>> tasks;
    for (std::size_t w = 0; w < 4; ++w) {
      // Busy fibers that yield, sleepers, and a waiter on the event, on every worker.
      tasks.push_back(rt.spawn_on(w, skein::FiberOptions{"spinner"}, [&] {
        while (!stop.load()) skein::yield();
      }));
      tasks.push_back(rt.spawn_on(w, skein::FiberOptions{"sleeper"}, [&] {
        while (!stop.load()) skein::sleep_for(1ms);
      }));
      tasks.push_back(rt.spawn_on(w, skein::FiberOptions{"waiter"}, [&] { release.wait(); }));
    }
    // Few rounds: with 4 workers spinning on 2 CPUs each snapshot waits for the kernel to run all 4.
    const std::size_t rounds = under_tsan ? 3 : 5;
    for (std::size_t i = 0; i < rounds; ++i) {
      const auto all = skein::debug::fibers();
      CHECK(all.size() <= 12);
      std::size_t running[4] = {};
      for (const auto& f : all) {
        CHECK(f.worker < 4);
        CHECK(f.parent == 0);  // spawned from this thread
        if (f.name == "waiter" && f.state == FiberState::parked) CHECK(f.reason == WaitReason::event);
        if (f.name == "sleeper" && f.state == FiberState::parked) CHECK(f.reason == WaitReason::sleep);
        if (f.state == FiberState::running && f.worker < 4) ++running[f.worker];
      }
      // The fiber each worker ran when asked, caught by the debug signal: one at most.
      for (const std::size_t n : running) CHECK(n <= 1);
    }
    const auto all = snapshot_when([](const auto& s) {
      return s.size() == 12 && std::count_if(s.begin(), s.end(), [](const FiberInfo& f) {
                                 return f.name == "waiter" && f.state == FiberState::parked;
                               }) == 4;
    });
    CHECK(all.size() == 12);
    for (std::size_t w = 0; w < 4; ++w)
      CHECK(std::count_if(all.begin(), all.end(), [&](const FiberInfo& f) { return f.worker == w; }) == 3);
    const auto s = skein::debug::stats();
    CHECK(s.workers.size() == 4);
    CHECK(s.total.fibers == 12);
    // Fibers on every worker snapshot at once: each parks while it waits, so its worker answers
    // the others meanwhile.
    std::vector<skein::Task<std::size_t>> lookers;
    for (std::size_t w = 0; w < 4; ++w)
      lookers.push_back(rt.spawn_on(w, [] {
        std::size_t seen = 0;
        for (int i = 0; i < 3; ++i) seen = std::max(seen, skein::debug::fibers().size());
        return seen;
      }));
    for (auto& l : lookers) CHECK(l.join() >= 12);
    stop = true;
    release.set();
    for (auto& t : tasks) t.join();
  }

  TEST_CASE("a dump of 10,000 fibers folds them by state, wait reason and spawn site with exact counts") {
    // ThreadSanitizer counts every fiber as a thread and caps them near 8,000 (docs/threading.md);
    // each costs it milliseconds to create and destroy, so its build runs a hundredth.
    const std::size_t scale = under_tsan ? 100 : 1;
    const std::size_t receivers = 4000 / scale, sleepers = 3000 / scale, waiters = 2000 / scale,
                      ready = 1000 / scale;
    skein::run([&] {
      skein::Channel<int> ch;
      skein::Event event;
      std::size_t started = 0;  // one worker: no atomics needed
      std::vector<skein::Task<void>> tasks;
      tasks.reserve(receivers + sleepers + waiters + ready);
      for (std::size_t i = 0; i < receivers; ++i)
        tasks.push_back(skein::spawn(skein::FiberOptions{"receiver"}, [&] {
          ++started;
          ch.recv();
        }));
      for (std::size_t i = 0; i < sleepers; ++i)
        tasks.push_back(skein::spawn(skein::FiberOptions{"sleeper"}, [&] {
          ++started;
          skein::sleep_for(1h);
        }));
      for (std::size_t i = 0; i < waiters; ++i)
        tasks.push_back(skein::spawn(skein::FiberOptions{"waiter"}, [&] {
          ++started;
          event.wait();
        }));
      while (started < tasks.size()) skein::yield();  // all of the above park
      for (std::size_t i = 0; i < ready; ++i)
        tasks.push_back(skein::spawn(skein::FiberOptions{"fresh"}, [] {}));

      const auto t0 = std::chrono::steady_clock::now();
      std::ostringstream out;
      skein::debug::dump(out);
      const auto took = std::chrono::steady_clock::now() - t0;
      MESSAGE("dump of " << tasks.size() + 1 << " fibers took "
                         << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms, "
                         << out.str().size() << " bytes");
      const std::string text = out.str();
      const std::size_t total = receivers + sleepers + waiters + ready + 1;
      CHECK(text.find("skein: " + std::to_string(total) + " fibers in 1 runtime(s), 1 worker(s): " +
                      std::to_string(ready) + " ready, 1 running, " +
                      std::to_string(receivers + sleepers + waiters) + " parked\n") == 0);
      CHECK(text.find("parked in: sleep " + std::to_string(sleepers) + ", channel recv " +
                      std::to_string(receivers) + ", event " + std::to_string(waiters) + "\n") !=
            std::string::npos);
      CHECK(text.find("\n" + std::to_string(receivers) + " fibers \"receiver\" parked: channel recv on 0x") !=
            std::string::npos);
      CHECK(text.find("\n" + std::to_string(sleepers) + " fibers \"sleeper\" parked: sleep for ") !=
            std::string::npos);
      CHECK(text.find("\n" + std::to_string(waiters) + " fibers \"waiter\" parked: event on 0x") !=
            std::string::npos);
      CHECK(text.find("\n" + std::to_string(ready) + " fibers \"fresh\" ready\n    spawned at ") !=
            std::string::npos);
      CHECK(text.find("debug_test.cpp:") != std::string::npos);
      CHECK(text.find("\nfiber #1 \"main\" running") != std::string::npos);
      // Largest group first.
      CHECK(text.find("fibers \"receiver\"") < text.find("fibers \"sleeper\""));
      if (scale == 1) MESSAGE(text.substr(0, 1200));

      ch.close();
      event.set();
      for (auto& t : tasks) t.cancel();
      for (auto& t : tasks) t.wait();
    });
  }

  TEST_CASE("the counters count spawns exactly, and switches, yields, parks by reason, timers and sleeps") {
    skein::run(skein::RuntimeOptions{2}, [] {
      const auto before = skein::debug::stats();
      REQUIRE(before.workers.size() == 2);
      CHECK(before.total.spawns == 1);  // main
      constexpr int n = 100;
      std::vector<skein::Task<void>> tasks;
      for (int i = 0; i < n; ++i)
        tasks.push_back(skein::spawn([] {
          skein::yield();
          skein::sleep_for(1ms);
        }));
      for (auto& t : tasks) t.join();
      // A fiber on the other worker wakes one here: a wake-up from another thread.
      skein::Event event;
      auto waiter = skein::spawn([&] { event.wait(); });
      skein::spawn_on(1, [&] {
        skein::sleep_for(25ms);  // longer than a tick of the coarse clock that times sleeps
        event.set();
      }).join();
      waiter.join();
      const auto after = skein::debug::stats();
      CHECK(after.workers[0].spawns == 1 + n + 1);
      CHECK(after.workers[1].spawns == 1);
      CHECK(after.workers[1].remote_spawns == 1);
      CHECK(after.total.spawns == 1 + n + 2);
      CHECK(after.total.switches >= 3 * n);
      CHECK(after.total.yields >= n);
      CHECK(after.total.parks_by_reason[static_cast<std::size_t>(WaitReason::sleep)] >= n + 1);
      CHECK(after.total.parks_by_reason[static_cast<std::size_t>(WaitReason::event)] >= 1);
      CHECK(after.total.parks >= after.total.parks_by_reason[static_cast<std::size_t>(WaitReason::sleep)]);
      CHECK(after.total.timers_fired >= n + 1);
      CHECK(after.workers[0].remote_wakeups >= 1);
      CHECK(after.total.idle_sleeps >= 1);
      CHECK(after.total.slept > 0ns);
      CHECK(after.total.run_queue_high_water >= 1);
      CHECK(after.total.fibers == 1);  // main
    });
  }

  TEST_CASE("yields and switches on one worker are counted exactly, seen from a fiber or another thread") {
    std::optional<skein::debug::Stats> inside;
    std::uint64_t inside_parks = 0;
    skein::run(skein::RuntimeOptions{1}, [&] {
      const auto before = skein::debug::stats();
      constexpr int fibers = 7, rounds = 13;
      std::vector<skein::Task<void>> tasks;
      for (int i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn([] {
          for (int r = 0; r < rounds; ++r) skein::yield();
        }));
      for (auto& t : tasks) t.join();
      const auto after = skein::debug::stats();
      CHECK(after.total.yields - before.total.yields == fibers * rounds);
      // Each child's turns end in its yields and its end; main's in its parks.
      CHECK(after.total.switches - before.total.switches ==
            fibers * (rounds + 1) + (after.total.parks - before.total.parks));
      // From a plain thread meanwhile (the worker answers between fibers while main sleeps).
      std::atomic<bool> done{false};
      std::thread other([&] {
        inside = skein::debug::stats();
        done.store(true);
      });
      while (!done.load()) skein::sleep_for(1ms);
      other.join();
      inside_parks = after.total.parks;
      CHECK(inside->total.yields == after.total.yields);
    });
    REQUIRE(inside);
    CHECK(inside->total.parks >= inside_parks);
  }

  TEST_CASE("a hook names the libc call its fiber waits in") {
    skein::run([] {
      skein::Event event;
      auto t = skein::spawn([&] {
        const skein::detail::HookedCallScope call("recv");
        event.wait();
      });
      const auto all = snapshot_when([&](const auto& s) { return all_parked(s, {t.id()}); });
      const auto f = find(all, t.id());
      REQUIRE(f);
      REQUIRE(f->hooked_call);
      CHECK(std::string(f->hooked_call) == "recv");
      CHECK(skein::debug::describe(*f).find("parked: event on 0x") != std::string::npos);
      CHECK(skein::debug::describe(*f).find("(in recv)") != std::string::npos);
      event.set();
      t.join();
      CHECK(find(skein::debug::fibers(), skein::this_fiber::id())->hooked_call == nullptr);
    });
  }
  TEST_CASE(
      "a fiber parked in accept or in a read shows that wait with its descriptor, on either I/O backend") {
    skein::run([] {
      skein::Listener l = skein::listen(skein::Address::loopback(0));
      auto acceptor = skein::spawn([&] { return l.accept(); });
      const auto accepting = snapshot_when([&](const auto& s) { return all_parked(s, {acceptor.id()}); });
      const auto a = find(accepting, acceptor.id());
      REQUIRE(a);
      CHECK(a->reason == WaitReason::accept);
      CHECK(a->detail == static_cast<std::uintptr_t>(l.fd()));

      skein::Stream client = skein::connect(l.local_address());
      skein::Stream server = acceptor.join();
      auto reader = skein::spawn([&] {
        char c = 0;
        return server.read(std::span(&c, 1));
      });
      const auto reading = snapshot_when([&](const auto& s) { return all_parked(s, {reader.id()}); });
      const auto r = find(reading, reader.id());
      REQUIRE(r);
      CHECK(r->reason == WaitReason::fd_read);
      CHECK(r->detail == static_cast<std::uintptr_t>(server.fd()));
      client.write_all("x");
      CHECK(reader.join() == 1);
    });
  }
  TEST_CASE("a TaskGroup's and a Pool's children name the caller's spawn call as their spawn site") {
    skein::run([] {
      skein::Event stop;
      skein::TaskGroup g;
      skein::Pool pool(2);
      auto local = g.spawn([&] { stop.wait(); });
      const int group_line = __LINE__ - 1;
      auto pooled = pool.spawn([&] { stop.wait(); });
      const int pool_line = __LINE__ - 1;
      const auto all = snapshot_when([&](const auto& s) { return all_parked(s, {local.id(), pooled.id()}); });
      for (const auto& [id, line] : {std::pair{local.id(), group_line}, std::pair{pooled.id(), pool_line}}) {
        const auto f = find(all, id);
        REQUIRE(f);
        CHECK(std::strstr(f->spawned_at.file_name(), "debug_test.cpp") != nullptr);
        CHECK(f->spawned_at.line() == static_cast<std::uint_least32_t>(line));
      }
      stop.set();
      g.join();
      pool.join();
    });
  }
}

TEST_SUITE("debug") {
  TEST_CASE("a fiber's stack_used covers the 100 KiB it touched, and a fresh fiber's only a few pages") {
    skein::run([] {
      skein::Event go;
      std::atomic<int> started{0};
      // Stack sizes no other case uses: fresh mappings, not stacks an earlier fiber touched.
      auto deep = skein::spawn(skein::FiberOptions{"deep", 1024 * 1024 + 3 * 4096}, [&] {
        volatile char buf[100 * 1024];
        for (std::size_t i = 0; i < sizeof buf; i += 256) buf[i] = 1;
        ++started;
        go.wait();
        buf[0] = 2;
      });
      auto fresh = skein::spawn(skein::FiberOptions{"fresh", 1024 * 1024 + 5 * 4096}, [&] {
        ++started;
        go.wait();
      });
      while (started < 2) skein::yield();
      const auto all = snapshot_when([&](const auto& s) { return all_parked(s, {deep.id(), fresh.id()}); });
      const auto d = find(all, deep.id());
      const auto f = find(all, fresh.id());
      REQUIRE(d);
      REQUIRE(f);
      MESSAGE("deep: " << d->stack_used << " bytes used, fresh: " << f->stack_used);
      CHECK(d->stack_used >= 100 * 1024);
      CHECK(d->stack_used <= d->stack_size);
      CHECK(f->stack_used > 0);
      CHECK(f->stack_used <= 16 * 1024);
      CHECK(skein::debug::describe(*d).find(" KiB used)") != std::string::npos);
      go.set();
      deep.join();
      fresh.join();
    });
  }
}
