// The program tests/gdb_test.sh debugs with runtime/gdb/skein-gdb.py: fibers parked in known places
// (functions with names nothing else has), on two workers, then a stop in skein_gdb_target_stop,
// where the script breaks. Run alone it releases every fiber and exits 0.
//
//   gdb_target [--abort] [--madvise-guards] [--idle N]
//
// --idle N: N more fibers parked on one event (for timing the commands on many fibers).
// --abort: abort() at the stop instead (a core dump by the kernel, where core dumps are enabled).
// Guard pages are mprotect'ed unless --madvise-guards: gdb 13's generate-core-file stops copying
// a mapping at its first unreadable page, so it would leave out stacks guarded by
// MADV_GUARD_INSTALL (docs/observability.md, "gdb").
#include <skein/skein.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <vector>

// Each fiber parks in one of these. Not inlined, and the work after the wait keeps the call from
// becoming a tail jump, so each function has a frame of its own on the parked stack.
[[gnu::noinline]] int skein_gdb_parked_in_recv(skein::Channel<int>& ch) {
  const int v = ch.recv().value_or(-1);
  asm volatile("" ::: "memory");
  return v + 1;
}

// An hour's sleep, which a cancel ends.
[[gnu::noinline]] void skein_gdb_parked_in_sleep() {
  try {
    skein::sleep_for(std::chrono::hours(1));
  } catch (const std::system_error&) {
  }
  asm volatile("" ::: "memory");
}

[[gnu::noinline]] void skein_gdb_parked_on_mutex(skein::Mutex& m) {
  std::lock_guard hold(m);
  asm volatile("" ::: "memory");
}

[[gnu::noinline]] void skein_gdb_parked_on_event(skein::Event& ev) {
  ev.wait();
  asm volatile("" ::: "memory");
}

[[gnu::noinline]] int skein_gdb_parked_in_generator(skein::Channel<int>& ch) {
  const int v = ch.recv().value_or(-1);
  asm volatile("" ::: "memory");
  return v + 3;
}

[[gnu::noinline]] int skein_gdb_consumer_of_generator(skein::Generator<int>& g) {
  const int v = g.next().value_or(-1);
  asm volatile("" ::: "memory");
  return v;
}

// The debugger's breakpoint: every fiber above is parked by the time the main fiber calls it.
namespace {
bool abort_at_stop = false;
}

extern "C" [[gnu::noinline]] void skein_gdb_target_stop() {
  if (abort_at_stop) std::abort();
  asm volatile("" ::: "memory");
}

[[gnu::noinline]] void skein_gdb_running_main(int ready_id) {
  std::printf("skein_gdb_target: stopping (ready fiber #%d)\n", ready_id);
  std::fflush(stdout);
  skein_gdb_target_stop();
  asm volatile("" ::: "memory");
}

int main(int argc, char** argv) {
  bool madvise_guards = false;
  int idle = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--abort") == 0)
      abort_at_stop = true;
    else if (std::strcmp(argv[i], "--madvise-guards") == 0)
      madvise_guards = true;
    else if (std::strcmp(argv[i], "--idle") == 0 && i + 1 < argc)
      idle = std::atoi(argv[++i]);
  }
  if (!madvise_guards) skein::set_guard_mode(skein::GuardMode::mprotect);
  skein::RuntimeOptions options;
  options.workers = 2;
  return skein::run(options, [idle] {
    skein::Channel<int> ch;
    skein::Channel<int> gen_ch;
    skein::Mutex m;
    skein::Event ev;
    m.lock();
    auto receiver = skein::spawn({"receiver"}, [&] { return skein_gdb_parked_in_recv(ch); });
    auto sleeper = skein::spawn({"sleeper"}, [&] { skein_gdb_parked_in_sleep(); });
    auto locker = skein::spawn({"locker"}, [&] { skein_gdb_parked_on_mutex(m); });
    auto consumer = skein::spawn({"consumer"}, [&] {
      skein::Generator<int> g(
          [&](skein::Yield<int>& yield) { yield(skein_gdb_parked_in_generator(gen_ch)); });
      return skein_gdb_consumer_of_generator(g);
    });
    skein::Event idle_event;
    std::vector<skein::Task<void>> idlers;
    idlers.reserve(static_cast<std::size_t>(idle));
    for (int i = 0; i < idle; ++i)
      idlers.push_back(skein::spawn({"idle"}, [&] { skein_gdb_parked_on_event(idle_event); }));
    // On the other worker: its thread sleeps in the kernel meanwhile.
    auto waiter = skein::spawn_on(1, {"waiter"}, [&] { skein_gdb_parked_on_event(ev); });
    // Let the children run up to their waits; the one on worker 1 may need longer.
    for (int i = 0; i < 200; ++i) {
      skein::sleep_for(std::chrono::milliseconds(1));
      bool all_parked = true;
      for (const auto& f : skein::debug::fibers())
        if (f.name != "main" && f.state != skein::debug::FiberState::parked) all_parked = false;
      if (all_parked) break;
    }
    // Spawned last and never run: ready when the debugger looks.
    auto ready = skein::spawn({"ready"}, [] { return 0; });
    skein_gdb_running_main(static_cast<int>(ready.id()));
    m.unlock();
    ch.send(1);
    gen_ch.send(1);
    ev.set();
    idle_event.set();
    for (auto& t : idlers) t.join();
    sleeper.cancel();
    int sum = receiver.join() + consumer.join() + ready.join();
    locker.join();
    waiter.join();
    sleeper.join();
    return sum == 2 + 4 ? 0 : 1;
  });
}
