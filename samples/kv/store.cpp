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

// Redis's stringmatchlen_impl (util.c), case-sensitive, on views: `at` reads the NUL that follows
// an sds string where Redis reads one past the end. `give_up` is its skipLongerMatches, which keeps
// patterns like "a*a*a*a*b" from taking exponential time.
bool match_impl(std::string_view pattern, std::string_view text, bool& give_up) {
  std::size_t p = 0, t = 0;
  const auto at = [&](std::size_t k) { return k < pattern.size() ? pattern[k] : '\0'; };
  std::size_t plen = pattern.size(), tlen = text.size();
  while (plen && tlen) {
    switch (pattern[p]) {
      case '*':
        while (plen && at(p + 1) == '*') {
          ++p;
          --plen;
        }
        if (plen == 1) return true;
        while (tlen) {
          if (match_impl(pattern.substr(p + 1, plen - 1), text.substr(t, tlen), give_up)) return true;
          if (give_up) return false;
          ++t;
          --tlen;
        }
        give_up = true;
        return false;
      case '?':
        ++t;
        --tlen;
        break;
      case '[': {
        ++p;
        --plen;
        const bool negate = at(p) == '^';
        if (negate) {
          ++p;
          --plen;
        }
        bool match = false;
        for (;;) {
          if (at(p) == '\\' && plen >= 2) {
            ++p;
            --plen;
            if (at(p) == text[t]) match = true;
          } else if (at(p) == ']') {
            break;
          } else if (plen == 0) {
            --p;
            ++plen;
            break;
          } else if (plen >= 3 && at(p + 1) == '-') {
            int start = at(p), end = at(p + 2);
            const int c = text[t];
            if (start > end) std::swap(start, end);
            p += 2;
            plen -= 2;
            if (c >= start && c <= end) match = true;
          } else if (at(p) == text[t]) {
            match = true;
          }
          ++p;
          --plen;
        }
        if (negate) match = !match;
        if (!match) return false;
        ++t;
        --tlen;
        break;
      }
      case '\\':
        if (plen >= 2) {
          ++p;
          --plen;
        }
        [[fallthrough]];
      default:
        if (at(p) != text[t]) return false;
        ++t;
        --tlen;
        break;
    }
    ++p;
    --plen;
    if (tlen == 0) {
      while (at(p) == '*') {
        ++p;
        --plen;
      }
      break;
    }
  }
  return plen == 0 && tlen == 0;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) noexcept {
  bool give_up = false;
  return match_impl(pattern, text, give_up);
}

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

std::int64_t Store::unix_ms() noexcept {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  const auto steady = [] {
    return duration_cast<milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  static const std::int64_t offset =
      duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() - steady();
  return steady() + offset;
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
void set_deadline_of(S& s, E& e, std::int64_t at) {
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
    if (!options.keep_ttl) set_deadline_of(s, *e, options.expires_at);
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
  mset_locked(pairs);
}

bool Store::msetnx(std::span<const std::string_view> pairs) {
  MultiLock lock(*this, pairs, 2);
  for (std::size_t i = 0; i < pairs.size(); i += 2)
    if (find_live(shard_of(pairs[i]), pairs[i])) return false;
  mset_locked(pairs);
  return true;
}

void Store::mset_locked(std::span<const std::string_view> pairs) {
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    Shard& s = shard_of(pairs[i]);
    const auto it = s.map.find(pairs[i]);
    if (it != s.map.end()) {
      assign_value(it->second.value, pairs[i + 1]);
      set_deadline_of(s, it->second, 0);
    } else {
      s.map.emplace(std::string(pairs[i]), Entry{std::string(pairs[i + 1]), 0});
    }
  }
}

bool Store::expire_at(std::string_view key, std::int64_t at, unsigned conditions) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  if (!e) return false;
  const std::int64_t current = e->expires_at;  // 0: none, which GT and LT take as forever
  if ((conditions & nx) && current != 0) return false;
  if ((conditions & xx) && current == 0) return false;
  if ((conditions & gt) && (current == 0 || at <= current)) return false;
  if ((conditions & lt) && current != 0 && at >= current) return false;
  if (at <= now()) {
    const auto it = s.map.find(key);
    if (it->second.expires_at != 0) --s.with_deadline;
    s.map.erase(it);
    return true;
  }
  set_deadline_of(s, *e, at);
  return true;
}

bool Store::persist(std::string_view key) {
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  Entry* e = find_live(s, key);
  if (!e || e->expires_at == 0) return false;
  set_deadline_of(s, *e, 0);
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

std::string_view Store::Slot::value() const noexcept {
  return entry_->value;
}

std::string& Store::Slot::value_ref() noexcept {
  return entry_->value;
}

std::int64_t Store::Slot::deadline() const noexcept {
  return entry_->expires_at;
}

void Store::Slot::set_value(std::string_view value) {
  if (entry_) {
    assign_value(entry_->value, value);
  } else {
    entry_ = &shard_.map.emplace(std::string(key_), Entry{std::string(value), 0}).first->second;
  }
}

void Store::Slot::set_deadline(std::int64_t at) {
  if (at != 0 && at <= now()) return erase();
  set_deadline_of(shard_, *entry_, at);
}

void Store::Slot::erase() {
  if (!entry_) return;
  if (entry_->expires_at != 0) --shard_.with_deadline;
  shard_.map.erase(shard_.map.find(key_));
  entry_ = nullptr;
}

Store::RenameResult Store::rename(std::string_view from, std::string_view to, bool nx) {
  const std::string_view both[] = {from, to};
  MultiLock lock(*this, both, 1);
  Shard& fs = shard_of(from);
  if (!find_live(fs, from)) return RenameResult::no_such_key;
  if (from == to) return nx ? RenameResult::target_exists : RenameResult::ok;
  Shard& ts = shard_of(to);
  if (Entry* old = find_live(ts, to)) {
    if (nx) return RenameResult::target_exists;
    if (old->expires_at != 0) --ts.with_deadline;
    ts.map.erase(ts.map.find(to));
  }
  // The node moves with its value: nothing is copied but the new key.
  auto node = fs.map.extract(fs.map.find(from));
  const bool deadline = node.mapped().expires_at != 0;
  node.key() = std::string(to);
  ts.map.insert(std::move(node));
  if (deadline) {
    --fs.with_deadline;
    ++ts.with_deadline;
  }
  return RenameResult::ok;
}

bool Store::copy(std::string_view from, std::string_view to, bool replace) {
  const std::string_view both[] = {from, to};
  MultiLock lock(*this, both, 1);
  const Entry* source = find_live(shard_of(from), from);
  if (!source) return false;
  Shard& ts = shard_of(to);
  Entry* target = find_live(ts, to);
  if (target && !replace) return false;
  if (target) {
    assign_value(target->value, source->value);
    set_deadline_of(ts, *target, source->expires_at);
  } else {
    ts.map.emplace(std::string(to), Entry{source->value, source->expires_at});
    if (source->expires_at != 0) ++ts.with_deadline;
  }
  return true;
}

void Store::keys(std::string_view pattern, const std::function<void(std::string_view)>& f) {
  MultiLock lock(*this, ~std::uint64_t{0});
  const std::int64_t t = now();
  const bool all = pattern == "*";
  for (Shard& s : shards_)
    for (const auto& [key, e] : s.map)
      if ((e.expires_at == 0 || t < e.expires_at) && (all || glob_match(pattern, key))) f(key);
}

std::uint64_t Store::scan(std::uint64_t cursor, std::size_t count,
                          const std::function<void(std::string_view)>& f) {
  std::size_t shard = cursor % kShards;
  std::uint64_t bucket = cursor / kShards;
  const std::size_t max_buckets = count > SIZE_MAX / 10 ? SIZE_MAX : count * 10;
  std::size_t found = 0, walked = 0;
  for (; shard < kShards; ++shard, bucket = 0) {
    Shard& s = shards_[shard];
    std::lock_guard lock(s.mutex);
    if (s.map.empty()) continue;  // costs nothing: not counted as walked
    const std::size_t buckets = s.map.bucket_count();
    const std::int64_t t = now();
    for (; bucket < buckets; ++bucket) {
      if (found >= count || walked >= max_buckets) return bucket * kShards + shard;
      ++walked;
      for (auto it = s.map.begin(bucket); it != s.map.end(bucket); ++it) {
        if (it->second.expires_at != 0 && t >= it->second.expires_at) continue;
        f(it->first);
        ++found;
      }
    }
  }
  return 0;
}

bool Store::random_key(std::string& key) {
  const auto next = [this] {  // splitmix64
    std::uint64_t z = random_state_.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const std::size_t first = next() % kShards;
  for (std::size_t k = 0; k < kShards; ++k) {
    Shard& s = shards_[(first + k) % kShards];
    std::lock_guard lock(s.mutex);
    if (s.map.empty()) continue;
    const std::int64_t t = now();
    const std::size_t buckets = s.map.bucket_count();
    const std::size_t start = next() % buckets;
    for (std::size_t b = 0; b < buckets; ++b) {
      const std::size_t bucket = (start + b) % buckets;
      for (auto it = s.map.begin(bucket); it != s.map.end(bucket); ++it) {
        if (it->second.expires_at != 0 && t >= it->second.expires_at) continue;
        key = it->first;
        return true;
      }
    }
  }
  return false;
}

std::size_t Store::with_deadline() const {
  std::size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.with_deadline;
  }
  return n;
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
