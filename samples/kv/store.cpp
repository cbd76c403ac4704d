// store.cpp: Store (see the header).

#include "store.hpp"

#include "resp.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <utility>

namespace skein_samples::kv {

namespace {

// Stores `value` in `target`, giving back the memory of a much larger old value.
void assign_value(std::string& target, std::string_view value) {
  if (target.capacity() > 4096 && target.capacity() / 2 > value.size()) {
    target = std::string(value);
  } else {
    target.assign(value);
  }
}

}  // namespace

// The locks of a set of shards, taken in ascending index order and released on destruction.
class Store::MultiLock {
 public:
  MultiLock(Store& store, std::span<const std::string_view> keys, std::size_t stride) : store_(store) {
    for (std::size_t i = 0; i < keys.size(); i += stride) mask_ |= std::uint64_t{1} << shard_index(keys[i]);
    lock();
  }
  MultiLock(Store& store, std::uint64_t mask) : store_(store), mask_(mask) { lock(); }
  ~MultiLock() {
    for (std::uint64_t m = mask_; m != 0; m &= m - 1) store_.shards_[std::countr_zero(m)].mutex.unlock();
  }
  MultiLock(const MultiLock&) = delete;
  MultiLock& operator=(const MultiLock&) = delete;

 private:
  void lock() {
    for (std::uint64_t m = mask_; m != 0; m &= m - 1) store_.shards_[std::countr_zero(m)].mutex.lock();
  }
  Store& store_;
  std::uint64_t mask_ = 0;
};
static_assert(Store::kShards == 64, "MultiLock keeps one bit per shard in a 64-bit mask");

std::int64_t Store::steady_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::size_t Store::shard_index(std::string_view key) noexcept {
  // The top bits: the maps' bucket index comes from the whole hash modulo a prime.
  return static_cast<std::size_t>(static_cast<std::uint64_t>(std::hash<std::string_view>{}(key)) >> 58);
}

Store::Entry* Store::find_live(Shard& s, std::string_view key) {
  const auto it = s.map.find(key);
  if (it == s.map.end()) return nullptr;
  if (it->second.expires_at != 0 && now() >= it->second.expires_at) {
    --s.with_deadline;
    s.map.erase(it);
    return nullptr;
  }
  return &it->second;
}

namespace {
template <class S, class E>
void set_deadline(S& s, E& e, std::int64_t at) {
  if (e.expires_at == 0 && at != 0) ++s.with_deadline;
  if (e.expires_at != 0 && at == 0) --s.with_deadline;
  e.expires_at = at;
}
}  // namespace

bool Store::set(std::string_view key, std::string_view value, const SetOptions& options) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  if (options.old_value)
    (*options.old_value)(e ? std::optional<std::string_view>(e->value) : std::optional<std::string_view>());
  if ((options.condition == Condition::if_absent && e) || (options.condition == Condition::if_present && !e))
    return false;
  if (e) {
    assign_value(e->value, value);
    if (!options.keep_ttl) set_deadline(s, *e, options.expires_at);
  } else {
    s.map.emplace(std::string(key), Entry{std::string(value), options.expires_at});
    if (options.expires_at != 0) ++s.with_deadline;
  }
  return true;
}

Store::IncrResult Store::incr_by(std::string_view key, std::int64_t delta, std::int64_t& result) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  std::int64_t current = 0;
  if (e && !parse_int64(e->value, current)) return IncrResult::not_integer;
  if (__builtin_add_overflow(current, delta, &result)) return IncrResult::overflow;
  char buf[24];
  const char* end = std::to_chars(buf, buf + sizeof buf, result).ptr;
  const std::string_view text(buf, static_cast<std::size_t>(end - buf));
  if (e) {
    e->value.assign(text);
  } else {
    s.map.emplace(std::string(key), Entry{std::string(text), 0});
  }
  return IncrResult::ok;
}

std::size_t Store::del(std::span<const std::string_view> keys) {
  MultiLock lock(*this, keys, 1);
  std::size_t removed = 0;
  for (const std::string_view key : keys) {
    Shard& s = shard_of(key);
    const auto it = s.map.find(key);
    if (it == s.map.end()) continue;
    const std::int64_t at = it->second.expires_at;
    if (at != 0) --s.with_deadline;
    s.map.erase(it);
    if (at == 0 || now() < at) ++removed;  // an expired key is removed but was not there
  }
  return removed;
}

std::size_t Store::exists(std::span<const std::string_view> keys) {
  MultiLock lock(*this, keys, 1);
  std::size_t found = 0;
  for (const std::string_view key : keys)
    if (find_live(shard_of(key), key)) ++found;
  return found;
}

void Store::mget(std::span<const std::string_view> keys,
                 const std::function<void(std::size_t, std::optional<std::string_view>)>& f) {
  MultiLock lock(*this, keys, 1);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const Entry* e = find_live(shard_of(keys[i]), keys[i]);
    f(i, e ? std::optional<std::string_view>(e->value) : std::optional<std::string_view>());
  }
}

void Store::mset(std::span<const std::string_view> pairs) {
  MultiLock lock(*this, pairs, 2);
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    Shard& s = shard_of(pairs[i]);
    const auto it = s.map.find(pairs[i]);
    if (it != s.map.end()) {
      assign_value(it->second.value, pairs[i + 1]);
      set_deadline(s, it->second, 0);
    } else {
      s.map.emplace(std::string(pairs[i]), Entry{std::string(pairs[i + 1]), 0});
    }
  }
}

bool Store::expire_at(std::string_view key, std::int64_t at, ExpireCondition condition) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  if (!e) return false;
  const std::int64_t current = e->expires_at;  // 0: none, which GT and LT take as forever
  switch (condition) {
    case ExpireCondition::always:
      break;
    case ExpireCondition::nx:
      if (current != 0) return false;
      break;
    case ExpireCondition::xx:
      if (current == 0) return false;
      break;
    case ExpireCondition::gt:
      if (current == 0 || at <= current) return false;
      break;
    case ExpireCondition::lt:
      if (current != 0 && at >= current) return false;
      break;
  }
  if (at <= now()) {
    const auto it = s.map.find(key);
    if (it->second.expires_at != 0) --s.with_deadline;
    s.map.erase(it);
    return true;
  }
  set_deadline(s, *e, at);
  return true;
}

bool Store::persist(std::string_view key) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  if (!e || e->expires_at == 0) return false;
  set_deadline(s, *e, 0);
  return true;
}

std::int64_t Store::ttl_ms(std::string_view key) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  const Entry* e = find_live(s, key);
  if (!e) return -2;
  if (e->expires_at == 0) return -1;
  return std::max<std::int64_t>(0, e->expires_at - now());
}

std::size_t Store::size() const {
  std::size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.map.size();
  }
  return n;
}

void Store::clear() {
  std::array<Map, kShards> old;  // freed after the locks are released
  {
    MultiLock lock(*this, ~std::uint64_t{0});
    for (std::size_t i = 0; i < kShards; ++i) {
      old[i].swap(shards_[i].map);
      shards_[i].with_deadline = 0;
      shards_[i].sweep_cursor = 0;
    }
  }
}

std::size_t Store::sweep(std::size_t buckets) {
  std::size_t removed = 0;
  for (Shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    if (s.with_deadline == 0) continue;
    const std::int64_t t = now();
    for (int round = 0; round < 16 && s.with_deadline != 0; ++round) {
      std::size_t examined = 0, expired = 0;
      const std::size_t count = s.map.bucket_count();
      for (std::size_t k = 0; k < std::min(buckets, count); ++k) {
        const std::size_t b = s.sweep_cursor++ % count;
        for (auto it = s.map.begin(b); it != s.map.end(b);) {
          const Entry& e = it->second;
          const std::string_view key = it->first;
          ++it;  // erasing another element leaves this (local) iterator valid
          if (e.expires_at == 0) continue;
          ++examined;
          if (t >= e.expires_at) {
            s.map.erase(s.map.find(key));
            --s.with_deadline;
            ++expired;
          }
        }
      }
      if (s.sweep_cursor >= count) s.sweep_cursor = 0;
      removed += expired;
      if (examined == 0 || expired * 4 <= examined) break;
    }
  }
  return removed;
}

}  // namespace skein_samples::kv
