// The pieces every synchronisation primitive waits with: the caller as a waiter, and handing
// wake-ups out of a wait list. Internal to skein: public only because the templates need it.
//
// The protocol, for a primitive whose state is guarded by its WaitList's lock:
//   waiter:  lock; if the condition holds, take it and return. Otherwise attach() a node, push it,
//            unlock, block(). Wake::notified means a waker handed over what was waited for (the
//            lock, a permit, a value); any other Wake means the node is off the list and nothing
//            was handed over.
//   waker:   lock; claim_front() (or claim_all()) the waiters it can satisfy, hand each its due
//            while still holding the lock, unlock, then deliver(). Delivering last means the waker
//            touches neither the primitive nor the node once a waiter can run and destroy them.
#pragma once

#include <skein/detail/fiber.hpp>

namespace skein::detail {

// Makes `node` stand for the caller: its fiber, or (outside a fiber) `thread`.
inline void attach(WaitNode& node, ThreadWaiter& thread) noexcept {
  node.fiber = current_fiber();
  node.thread = node.fiber ? nullptr : &thread;
}

// Pops waiters off `list` (its lock held) until one's wake-up is won, and returns it; nullptr if
// none is left. Waiters that lost the race are leaving on their own.
template <class Node = WaitNode>
Node* claim_front(WaitList& list) noexcept {
  while (WaitNode* n = list.pop_front())
    if (claim(n)) return static_cast<Node*>(n);
  return nullptr;
}

// claim_front(), as the Wakeup to deliver once the lock is released (empty if nobody is waiting).
inline Wakeup claim_one(WaitList& list) noexcept {
  const WaitNode* n = claim_front(list);
  return n ? wakeup_of(n) : Wakeup{};
}

// Pops every waiter off `list` (its lock held) and returns those whose wake-up was won, chained
// through `next`, for deliver_all() once the lock is released.
inline WaitNode* claim_all(WaitList& list) noexcept {
  WaitNode* chain = nullptr;
  WaitNode** tail = &chain;
  while (WaitNode* n = list.pop_front()) {
    if (!claim(n)) continue;
    *tail = n;
    tail = &n->next;
  }
  *tail = nullptr;
  return chain;
}

// Delivers a chain from claim_all(). Reads each link before delivering its node: a node can vanish
// the moment its waiter runs.
inline void deliver_all(WaitNode* chain) noexcept {
  while (chain) {
    WaitNode* next = chain->next;
    deliver(wakeup_of(chain));
    chain = next;
  }
}

// Runs `f` under a ShieldGuard (shielded from cancellation and from the TimeoutScope), so a wait
// inside ends only by its own condition: for cleanup that must not return early (re-locking a
// mutex after a condition wait, reaping children). Exceptions from `f` are dropped.
template <class F>
void run_shielded(F&& f) noexcept {
  const ShieldGuard shield;
  try {
    f();
  } catch (...) {
  }
}

}  // namespace skein::detail
