// Channels (Go's chan, gevent's Queue) and select, between fibers on any workers and plain threads.
//
//   Channel<T> ch;              unbuffered: a send waits for a receiver (a rendezvous)
//   Channel<T> ch(16);          bounded: a send waits only while 16 values are queued
//   Channel<T> ch(unbounded);   a send never waits
//
// close() ends the stream: receivers drain what is queued, then get std::nullopt (and range-for
// ends); senders, waiting or new, get an error. Values are moved, never copied, so move-only
// payloads work. Waiters are served in arrival order.
//
// A value whose move constructor throws: the call that was moving it (a send handing it to a
// receiver, a receive taking it) throws that exception and has no effect; the value stays with its
// sender or in the queue, and a waiting counterpart goes on waiting, under its own deadline. A
// receive that took a queued value never throws for refilling the queue from a waiting sender:
// that sender tries again itself.
//
// Errors (docs/errors.md): a send on a closed channel throws std::system_error(broken_pipe) — a
// waiting sender's value is then not delivered. Every blocking call is a cancellation point
// (operation_canceled) and honours TimeoutScope (timed_out). A call's own deadline is not an
// error: send_until returns false, recv_until std::nullopt (closed() tells it from the end).
#pragma once

#include <skein/detail/wait_queue.hpp>
#include <skein/time.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

namespace skein {

// The capacity of a channel whose sends never wait.
inline constexpr std::size_t unbounded = std::numeric_limits<std::size_t>::max();

template <class T>
class Channel;

namespace detail {

// A queued channel operation: a plain send or receive, or one case of a select. Whoever completes
// it (a counterpart, or close()) has claimed its waiter, and records which operation fired and
// whether it was the channel closing.
struct ChanWait : WaitNode {
  SpinLock* lock = nullptr;      // the channel's
  std::size_t* fired = nullptr;  // set to `index` by the party completing this operation
  bool* closed = nullptr;        // set when the completion is close()
  std::size_t index = 0;
};

template <class T>
struct ChanNode : ChanWait {
  T* send_value = nullptr;                // a send's value, moved from by the receiver
  std::optional<T>* recv_slot = nullptr;  // where a receive's value is put
};

// The Unlink of a queued channel operation: off its list, under the channel's lock.
inline void unlink_chan(Fiber*, void* node) noexcept {
  auto* n = static_cast<ChanWait*>(node);
  SpinGuard g(*n->lock);
  if (n->linked) n->owner->remove(n);
}

[[noreturn]] inline void throw_closed() {
  throw std::system_error(std::make_error_code(std::errc::broken_pipe),
                          "skein::Channel: send on a closed channel");
}

// What a select waits with: the operation that fired, set by whoever completed it.
struct SelectState {
  static constexpr std::size_t none = ~std::size_t{0};
  std::size_t fired = none;
  bool closed = false;
};

// A cheap per-thread generator (xorshift32): a number in [0, n).
inline std::size_t select_random(std::size_t n) noexcept {
  constinit thread_local std::uint32_t x = 2463534242u;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return static_cast<std::size_t>((std::uint64_t{x} * n) >> 32);
}

// select polls its channel cases in a random order (a Fisher-Yates shuffle, as Go's pollorder), so
// each ready case is equally likely to fire, wherever it sits among the others.
template <std::size_t N>
void select_shuffle(std::array<std::size_t, N>& order) noexcept {
  for (std::size_t i = N; i > 1; --i) {
    const std::size_t j = select_random(i);
    const std::size_t t = order[i - 1];
    order[i - 1] = order[j];
    order[j] = t;
  }
}

struct ChannelAccess;

// select's locks: every case's channel lock, in address order. The analysis cannot follow a lock
// taken through an array, so these two are exempt; the cases' calls made in between are too.
inline void lock_each(SpinLock* const* locks, std::size_t n) noexcept SKEIN_NO_THREAD_SAFETY_ANALYSIS {
  for (std::size_t k = 0; k < n; ++k) locks[k]->lock();
}
inline void unlock_each(SpinLock* const* locks, std::size_t n) noexcept SKEIN_NO_THREAD_SAFETY_ANALYSIS {
  for (std::size_t k = n; k > 0; --k) locks[k - 1]->unlock();
}

}  // namespace detail

template <class T>
class Channel {
  static_assert(!std::is_reference_v<T>,
                "skein::Channel<T&>: a channel carries values; send a pointer or a std::reference_wrapper");
  static_assert(std::is_reference_v<T> || (std::is_object_v<T> && !std::is_array_v<T> &&
                                           !std::is_const_v<T> && !std::is_volatile_v<T>),
                "skein::Channel<T>: T must be a non-const, non-array object type");
  static_assert(std::is_reference_v<T> || std::is_move_constructible_v<T>,
                "skein::Channel<T>: T must be move-constructible");

 public:
  using value_type = T;

  // `capacity` values may wait in the channel; 0 (the default) makes every send a rendezvous with
  // a receiver, `unbounded` lets sends never wait.
  explicit Channel(std::size_t capacity = 0) noexcept : capacity_(capacity) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Waits until a receiver takes `value` or there is room for it. Throws broken_pipe if the
  // channel is (or gets) closed first.
  void send(T value) { send_until(value, no_deadline); }

  // As send(), giving up at `deadline`: false, and `value` left as it was, if it was not sent.
  bool send_until(T& value, Deadline deadline) { return send_impl(value, deadline.at()); }
  bool send_until(T&& value, Deadline deadline) { return send_impl(value, deadline.at()); }
  template <class Rep, class Period>
  bool send_for(T& value, std::chrono::duration<Rep, Period> d) {
    return send_impl(value, Deadline(d).at());
  }
  template <class Rep, class Period>
  bool send_for(T&& value, std::chrono::duration<Rep, Period> d) {
    return send_impl(value, Deadline(d).at());
  }

  // Sends only if that needs no wait (a receiver is waiting, or there is room); `value` is left as
  // it was otherwise. Throws broken_pipe if closed.
  bool try_send(T& value) { return try_send_impl(value); }
  bool try_send(T&& value) { return try_send_impl(value); }

  // Waits for a value. std::nullopt once the channel is closed and drained.
  std::optional<T> recv() { return recv_until(no_deadline); }

  // As recv(), giving up at `deadline`: std::nullopt if nothing came by then.
  std::optional<T> recv_until(Deadline deadline);
  template <class Rep, class Period>
  std::optional<T> recv_for(std::chrono::duration<Rep, Period> d) {
    return recv_until(d);
  }

  // A value if one is there without waiting, else std::nullopt.
  std::optional<T> try_recv();

  // Closes the channel: waiting receivers get std::nullopt (there is nothing queued for them),
  // waiting senders throw broken_pipe, queued values stay for receivers to drain. Idempotent.
  void close() noexcept;

  bool closed() const noexcept {
    detail::SpinGuard g(lock_);
    return closed_;
  }
  // Values queued right now (a snapshot).
  std::size_t size() const noexcept {
    detail::SpinGuard g(lock_);
    return buffer_.size();
  }
  std::size_t capacity() const noexcept { return capacity_; }

  // for (T v : channel) receives until the channel is closed and drained. Each value is moved out
  // of the iterator (it yields T&&), so `for (T v : ch)`, `for (auto&& v : ch)` and
  // `for (const T& v : ch)` all work, move-only T included.
  class iterator {
   public:
    using value_type = T;
    using reference = T&&;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    T&& operator*() const noexcept { return std::move(*value_); }
    iterator& operator++() {
      value_ = ch_->recv();
      if (!value_) ch_ = nullptr;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const noexcept { return ch_ == nullptr; }

   private:
    friend class Channel;
    explicit iterator(Channel* ch) : ch_(ch) { ++*this; }
    Channel* ch_ = nullptr;
    mutable std::optional<T> value_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend struct detail::ChannelAccess;
  using Node = detail::ChanNode<T>;

  // Lock held: hands `value` to the oldest waiting receiver, or queues it if there is room. If
  // the move throws, `value` stays with the caller and the receiver, in `wake` but not fired, is
  // to be woken to try again: the caller delivers `wake` however this returns.
  bool offer(T& value, detail::Wakeup& wake) SKEIN_REQUIRES(lock_) {
    if (Node* r = detail::claim_front<Node>(receivers_)) {
      wake = detail::wakeup_of(r);
      r->recv_slot->emplace(std::move(value));
      *r->fired = r->index;
      return true;
    }
    if (buffer_.size() >= capacity_) return false;
    buffer_.push_back(std::move(value));
    return true;
  }

  // Lock held: takes the oldest value — from the queue (refilled from the oldest waiting sender)
  // or, unbuffered, straight from that sender. A move that throws leaves the value where it was;
  // a sender in `wake` but not fired is to be woken to try again (the caller delivers `wake`).
  bool take(std::optional<T>& out, detail::Wakeup& wake) SKEIN_REQUIRES(lock_) {
    if (!buffer_.empty()) {
      out.emplace(std::move(buffer_.front()));
      buffer_.pop_front();
      if (Node* s = detail::claim_front<Node>(senders_)) {
        wake = detail::wakeup_of(s);
        try {
          buffer_.push_back(std::move(*s->send_value));  // no effect if it throws
          *s->fired = s->index;
        } catch (...) {
          // This receive is complete; the sender, woken without its value taken, sends again.
        }
      }
      return true;
    }
    if (Node* s = detail::claim_front<Node>(senders_)) {
      wake = detail::wakeup_of(s);
      out.emplace(std::move(*s->send_value));
      *s->fired = s->index;
      return true;
    }
    return false;
  }

  // Lock held: makes `node` the caller's queued operation on `list`.
  void queue(detail::WaitList& list, Node& node, detail::ThreadWaiter& thread, detail::SelectState& st,
             std::size_t index) noexcept SKEIN_REQUIRES(lock_) {
    detail::attach(node, thread);
    node.lock = &lock_;
    node.fired = &st.fired;
    node.closed = &st.closed;
    node.index = index;
    list.push_back(&node);
  }

  bool send_impl(T& value, TimePoint deadline);
  bool try_send_impl(T& value);

  mutable detail::SpinLock lock_;  // guards everything below (the lists' own locks are unused)
  detail::WaitList senders_ SKEIN_GUARDED_BY(lock_);    // waiting only while full and no receiver waits
  detail::WaitList receivers_ SKEIN_GUARDED_BY(lock_);  // waiting only while empty and no sender waits
  std::deque<T> buffer_ SKEIN_GUARDED_BY(lock_);
  const std::size_t capacity_;
  bool closed_ SKEIN_GUARDED_BY(lock_) = false;
};

// A hand-off that throws (see offer/take) still wakes the counterpart it claimed, to try again.
#define SKEIN_CHANNEL_HANDOFF(guard, wake, ...) \
  try {                                         \
    __VA_ARGS__;                                \
  } catch (...) {                               \
    guard.unlock();                             \
    detail::deliver(wake);                      \
    throw;                                      \
  }

template <class T>
bool Channel<T>::try_send_impl(T& value) {
  detail::SpinGuard g(lock_);
  if (closed_) detail::throw_closed();
  detail::Wakeup wake;
  bool sent;
  SKEIN_CHANNEL_HANDOFF(g, wake, sent = offer(value, wake))
  if (!sent) return false;
  g.unlock();
  detail::deliver(wake);
  return true;
}

template <class T>
bool Channel<T>::send_impl(T& value, TimePoint deadline) {
  for (;;) {
    detail::SpinGuard g(lock_);
    if (closed_) detail::throw_closed();
    detail::Wakeup wake;
    bool sent;
    SKEIN_CHANNEL_HANDOFF(g, wake, sent = offer(value, wake))
    if (sent) {
      g.unlock();
      detail::deliver(wake);
      return true;
    }
    detail::ThreadWaiter thread;
    detail::SelectState st;
    Node node;
    node.send_value = &value;
    queue(senders_, node, thread, st, 0);
    g.unlock();
    const detail::Wake w = detail::block(detail::wait_for(debug::WaitReason::channel_send, this), node,
                                         deadline, &detail::unlink_chan, &node);
    if (w == detail::Wake::notified) {
      if (st.closed) detail::throw_closed();
      if (st.fired != detail::SelectState::none) return true;
      continue;  // a receiver's move of the value threw: nothing was taken, so send again
    }
    if (w == detail::Wake::timed_out) return false;
    detail::throw_if_interrupted(w);
    return false;
  }
}

template <class T>
std::optional<T> Channel<T>::recv_until(Deadline deadline) {
  std::optional<T> out;
  for (;;) {
    detail::SpinGuard g(lock_);
    detail::Wakeup wake;
    bool took;
    SKEIN_CHANNEL_HANDOFF(g, wake, took = take(out, wake))
    if (took) {
      g.unlock();
      detail::deliver(wake);
      return out;
    }
    if (closed_) return out;
    detail::ThreadWaiter thread;
    detail::SelectState st;
    Node node;
    node.recv_slot = &out;
    queue(receivers_, node, thread, st, 0);
    g.unlock();
    const detail::Wake w = detail::block(detail::wait_for(debug::WaitReason::channel_recv, this), node,
                                         deadline.at(), &detail::unlink_chan, &node);
    // Woken without a value and not by close(): a sender's move threw; wait again.
    if (w == detail::Wake::notified && st.fired == detail::SelectState::none) continue;
    if (w != detail::Wake::notified && w != detail::Wake::timed_out) detail::throw_if_interrupted(w);
    return out;
  }
}

template <class T>
std::optional<T> Channel<T>::try_recv() {
  std::optional<T> out;
  detail::SpinGuard g(lock_);
  detail::Wakeup wake;
  bool took;
  SKEIN_CHANNEL_HANDOFF(g, wake, took = take(out, wake))
  if (!took) return out;
  g.unlock();
  detail::deliver(wake);
  return out;
}

#undef SKEIN_CHANNEL_HANDOFF

template <class T>
void Channel<T>::close() noexcept {
  detail::WaitNode* woken;
  {
    detail::SpinGuard g(lock_);
    if (closed_) return;
    closed_ = true;
    // At most one of the lists has waiters; chain both anyway.
    woken = detail::claim_all(receivers_);
    detail::WaitNode** tail = &woken;
    while (*tail) tail = &(*tail)->next;
    *tail = detail::claim_all(senders_);
    for (detail::WaitNode* n = woken; n; n = n->next) {
      auto* c = static_cast<detail::ChanWait*>(n);
      *c->fired = c->index;
      *c->closed = true;
    }
  }
  detail::deliver_all(woken);
}

// ---- select ---------------------------------------------------------------------------------

namespace detail {

struct Noop {
  template <class... A>
  void operator()(A&&...) const noexcept {}
};

// What a select case on a channel does; select() holds every case's channel lock around the
// first two, so no counterpart can complete one case while another is being tried or queued:
//   try_now(st, wake)   complete now if possible (a counterpart to wake goes in `wake`)
//   enqueue(t, st, i)   queue the operation as case `i` of the calling waiter
//   dequeue()           (no lock held) leave the channel's list if still on it
//   fire(st)            (no lock held) run the case's callback
// The analysis cannot follow select's locks (taken through an array, in address order), so these
// are exempt from it: select holds the channel's lock around each call.
struct ChannelAccess {
  template <class T>
  static SpinLock& lock_of(Channel<T>& ch) noexcept {
    return ch.lock_;
  }
  template <class T>
  static bool try_recv(Channel<T>& ch, std::optional<T>& out, Wakeup& wake) SKEIN_NO_THREAD_SAFETY_ANALYSIS {
    return ch.take(out, wake) || ch.closed_;  // closed and drained fires with nullopt
  }
  template <class T>
  static bool try_send(Channel<T>& ch, T& value, SelectState& st,
                       Wakeup& wake) SKEIN_NO_THREAD_SAFETY_ANALYSIS {
    if (ch.closed_) {
      st.closed = true;  // fires, and fire() throws
      return true;
    }
    return ch.offer(value, wake);
  }
  template <class T>
  static void enqueue(Channel<T>& ch, bool send, ChanNode<T>& node, ThreadWaiter& thread, SelectState& st,
                      std::size_t index) noexcept SKEIN_NO_THREAD_SAFETY_ANALYSIS {
    ch.queue(send ? ch.senders_ : ch.receivers_, node, thread, st, index);
  }
};

template <class T, class F>
struct RecvCase {
  Channel<T>& ch;
  F f;
  std::optional<T> value;
  ChanNode<T> node;
  static constexpr bool is_channel = true;
  SpinLock& lock() noexcept { return ChannelAccess::lock_of(ch); }
  bool try_now(SelectState&, Wakeup& wake) { return ChannelAccess::try_recv(ch, value, wake); }
  void enqueue(ThreadWaiter& t, SelectState& st, std::size_t i) noexcept {
    node.recv_slot = &value;
    ChannelAccess::enqueue(ch, false, node, t, st, i);
  }
  void dequeue() noexcept {
    if (node.lock) unlink_chan(nullptr, &node);
  }
  void fire(const SelectState&) { f(std::move(value)); }
};

template <class T, class F>
struct SendCase {
  Channel<T>& ch;
  T value;
  F f;
  ChanNode<T> node;
  static constexpr bool is_channel = true;
  SpinLock& lock() noexcept { return ChannelAccess::lock_of(ch); }
  bool try_now(SelectState& st, Wakeup& wake) { return ChannelAccess::try_send(ch, value, st, wake); }
  void enqueue(ThreadWaiter& t, SelectState& st, std::size_t i) noexcept {
    node.send_value = &value;
    ChannelAccess::enqueue(ch, true, node, t, st, i);
  }
  void dequeue() noexcept {
    if (node.lock) unlink_chan(nullptr, &node);
  }
  void fire(const SelectState& st) {
    if (st.closed) throw_closed();
    f();
  }
};

template <class F>
struct TimeoutCase {
  TimePoint at;
  F f;
  static constexpr bool is_channel = false;
  void fire(const SelectState&) { f(); }
};

template <class F>
struct DefaultCase {
  F f;
  static constexpr bool is_channel = false;
  void fire(const SelectState&) { f(); }
};

template <class C>
inline constexpr bool is_timeout_case = false;
template <class F>
inline constexpr bool is_timeout_case<TimeoutCase<F>> = true;
template <class C>
inline constexpr bool is_default_case = false;
template <class F>
inline constexpr bool is_default_case<DefaultCase<F>> = true;

}  // namespace detail

// A select case that receives from `ch`; `f(std::optional<T>)` runs if it fires (std::nullopt:
// the channel is closed and drained).
template <class T, class F = detail::Noop>
detail::RecvCase<T, F> on_recv(Channel<T>& ch, F f = {}) {
  return {ch, std::move(f), std::nullopt, {}};
}

// A select case that sends `value` on `ch`; `f()` runs if it fires. If the channel is closed, the
// select throws broken_pipe.
template <class T, class F = detail::Noop>
detail::SendCase<T, F> on_send(Channel<T>& ch, T value, F f = {}) {
  return {ch, std::move(value), std::move(f), {}};
}

// A select case that fires when `deadline` passes first.
template <class F = detail::Noop>
detail::TimeoutCase<F> on_timeout(Deadline deadline, F f = {}) {
  return {deadline.at(), std::move(f)};
}

// A select case that fires at once if no channel case is ready: the select never waits.
template <class F = detail::Noop>
detail::DefaultCase<F> on_default(F f = {}) {
  return {std::move(f)};
}

// Waits until exactly one of the cases can proceed, performs it, runs its callback and returns its
// position in the argument list (Go's select). Ready cases are chosen among at random. With an
// on_default case it never waits; with on_timeout cases it waits until the earliest deadline.
// Throws like the cases' channels (broken_pipe for a send on a closed one), and like any wait.
template <class... Cases>
std::size_t select(Cases&&... cases) {
  constexpr std::size_t n = sizeof...(Cases);
  constexpr std::size_t channels = (0 + ... + (std::remove_cvref_t<Cases>::is_channel ? 1 : 0));
  static_assert(n > 0, "skein::select needs at least one case");
  static_assert((0 + ... + (detail::is_default_case<std::remove_cvref_t<Cases>> ? 1 : 0)) <= 1,
                "skein::select takes at most one on_default case");
  auto all = std::forward_as_tuple(cases...);
  // Calls g(case, index) for every case, or only for the channel cases.
  auto each = [&]<bool only_channels = false, class G>(G && g) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            auto& c = std::get<I>(all);
            if constexpr (!only_channels || std::remove_cvref_t<decltype(c)>::is_channel)
              g(c, std::integral_constant<std::size_t, I>{});
          }(),
          ...);
    }
    (std::make_index_sequence<n>{});
  };
  auto each_channel = [&](auto&& g) { each.template operator()<true>(g); };
  // The channel cases' positions in the argument list.
  constexpr auto channel_cases = [] {
    std::array<std::size_t, channels> at{};
    std::size_t k = 0, i = 0;
    ((std::remove_cvref_t<Cases>::is_channel ? void(at[k++] = i++) : void(i++)), ...);
    return at;
  }();

  for (;;) {
    detail::SelectState st;
    auto finish = [&]() -> std::size_t {
      each([&](auto& c, auto i) {
        if (i == st.fired) c.fire(st);
      });
      return st.fired;
    };

    // Every case's channel locked at once, in address order (so two selects cannot deadlock), each
    // lock once even if several cases share a channel.
    detail::SpinLock* locks[channels > 0 ? channels : 1];
    std::size_t held = 0;
    each_channel([&](auto& c, auto) { locks[held++] = &c.lock(); });
    std::sort(locks, locks + held, std::less<>{});
    held = static_cast<std::size_t>(std::unique(locks, locks + held) - locks);
    detail::lock_each(locks, held);
    auto unlock_all = [&] { detail::unlock_each(locks, held); };

    // A case that can proceed now, the channel cases tried in a random order so each ready one is
    // equally likely to fire.
    detail::Wakeup wake;
    try {
      if constexpr (channels > 0) {
        std::array<std::size_t, channels> order = channel_cases;
        detail::select_shuffle(order);
        for (std::size_t k = 0; k < channels && st.fired == detail::SelectState::none; ++k)
          each_channel([&](auto& c, auto i) {
            if (i == order[k] && c.try_now(st, wake)) st.fired = i;
          });
      }
    } catch (...) {
      // A move that threw: a counterpart it had claimed is woken to try again.
      unlock_all();
      detail::deliver(wake);
      throw;
    }
    TimePoint deadline = no_deadline;
    each([&](auto& c, auto i) {
      using C = std::remove_cvref_t<decltype(c)>;
      if constexpr (detail::is_default_case<C>)
        if (st.fired == detail::SelectState::none) st.fired = i;
      if constexpr (detail::is_timeout_case<C>)
        if (c.at < deadline) deadline = c.at;
    });
    if (st.fired != detail::SelectState::none) {
      unlock_all();
      detail::deliver(wake);
      return finish();
    }

    // Nothing can proceed: queue on every channel, then wait for a counterpart to complete one case
    // (it wins the caller's wake-up, so it is the only one), the earliest timeout, or a cancel.
    detail::ThreadWaiter thread;
    detail::WaitNode alone;  // stands for the caller when there are only timeouts
    detail::WaitNode* identity = &alone;
    detail::attach(alone, thread);
    each_channel([&](auto& c, auto i) {
      c.enqueue(thread, st, i);
      identity = &c.node;
    });
    unlock_all();
    auto dequeue_all = [&]() noexcept { each_channel([](auto& c, auto) { c.dequeue(); }); };
    using Dequeue = decltype(dequeue_all);
    // The other cases' nodes must be gone before the wake-up reopens (a fiber's reopens as it
    // resumes), or a counterpart could complete a second case of a select that has moved on.
    const detail::Wake w = detail::block(
        detail::WaitFor{debug::WaitReason::select, channels}, *identity, deadline,
        [](detail::Fiber*, void* d) noexcept { (*static_cast<Dequeue*>(d))(); }, &dequeue_all, true);
    if (w == detail::Wake::notified) {
      dequeue_all();  // a thread's wake-up never reopens, so its nodes may go now
      // Woken with no case fired: a counterpart's move threw, nothing was handed over; again.
      if (st.fired == detail::SelectState::none) continue;
      return finish();
    }
    if (w == detail::Wake::timed_out) {
      each([&](auto& c, auto i) {
        if constexpr (detail::is_timeout_case<std::remove_cvref_t<decltype(c)>>)
          if (st.fired == detail::SelectState::none && c.at == deadline) st.fired = i;
      });
      return finish();
    }
    detail::throw_if_interrupted(w);
    return detail::SelectState::none;
  }
}

}  // namespace skein
