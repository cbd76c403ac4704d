// store.hpp: the key-value store of samples/kv_server: string keys to string values with optional
// expiry, safe to share between threads (the connection fibers of every worker use one Store).
//
// Sharding. Keys are spread by hash over kShards (64) shards, each a hash map behind its own
// std::mutex. A lock is held only for the map operation itself (and, for reads, for copying the
// value into the caller's reply buffer): never across a fiber wait, so a fiber never parks holding
// one, and two workers contend only when they touch the same shard at the same moment. A
// single-key command takes one lock. A multi-key command (MGET, MSET, MSETNX, DEL, EXISTS, RENAME,
// COPY) takes the locks of every shard its keys fall in, always in ascending shard order (so two of
// them cannot deadlock), and is therefore atomic as in Redis: no client sees half of an MSET.
// FLUSHALL and KEYS take all 64 the same way (FLUSHALL swaps the maps out and frees the entries
// after unlocking); SCAN and RANDOMKEY lock one shard at a time.
//
// Lookups are heterogeneous (the maps hash std::string_view), so a GET or an overwriting SET
// builds no std::string for the key.
//
// Expiry, as Redis does it, lazy plus active: every access first checks the key's deadline and
// removes it if it has passed, so an expired key is never seen; and sweep(), which the server
// calls every 100 ms from a fiber of its own, walks a bounded number of hash buckets per shard
// (resuming where the last call stopped) in the shards that hold keys with a deadline, and
// removes the expired keys it finds, so memory comes back even for keys nobody reads again. Like
// Redis's, size() (DBSIZE) counts keys that have expired but not been reclaimed yet.
//
// Time is Unix milliseconds, as Redis's deadlines are (EXPIREAT and EXPIRETIME speak it), but read
// from a monotonic clock: steady_clock plus the offset to the system clock taken once, so a change
// of the wall clock does not move deadlines. It is read only when a deadline has to be set or
// checked; tests substitute their own clock.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

namespace skein_samples::kv {

// Whether `text` matches the glob-style `pattern` as Redis's stringmatchlen (KEYS, SCAN MATCH)
// decides it: * ? [abc] [^a-z] and \ escapes, byte for byte, case-sensitive.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

class Store {
  struct Entry;
  struct Shard;

 public:
  static constexpr std::size_t kShards = 64;
  using Clock = std::int64_t (*)();  // milliseconds, monotonic

  // Unix time in milliseconds, advancing with std::chrono::steady_clock (see above).
  static std::int64_t unix_ms() noexcept;

  explicit Store(Clock clock = &Store::unix_ms) : clock_(clock), started_(clock()) {}
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  std::int64_t now() const noexcept { return clock_(); }

  // Calls `f(value)` with the key's value, under the shard's lock, and returns true; false if the
  // key does not exist (or has expired).
  template <class F>
  bool get(std::string_view key, F&& f) {
    Shard& s = shard_of(key);
    std::lock_guard lock(s.mutex);
    const Entry* e = find_live(s, key);
    if (!e) return false;
    f(std::string_view(e->value));
    return true;
  }

  enum class Condition { always, if_absent, if_present };  // SET's NX and XX
  struct SetOptions {
    Condition condition = Condition::always;
    std::int64_t expires_at = 0;  // a deadline in ms, 0 for none
    bool keep_ttl = false;        // keep the old deadline (KEEPTTL); otherwise expires_at replaces it
    // If set, receives the old value (or nullopt), under the lock: SET's GET option.
    std::function<void(std::optional<std::string_view>)>* old_value = nullptr;
  };
  // Sets the key; returns false if the condition kept it from being set.
  bool set(std::string_view key, std::string_view value, const SetOptions& options);
  bool set(std::string_view key, std::string_view value) { return set(key, value, SetOptions{}); }

  enum class IncrResult { ok, not_integer, overflow };
  // Adds `delta` to the key's value read as a decimal int64 (a missing key counts as 0), keeping
  // its deadline; `result` receives the new value.
  IncrResult incr_by(std::string_view key, std::int64_t delta, std::int64_t& result);

  // Removes the keys; returns how many existed. Atomic.
  std::size_t del(std::span<const std::string_view> keys);
  // How many of the keys exist (a key named twice counts twice). Atomic.
  std::size_t exists(std::span<const std::string_view> keys);
  // Calls `f(i, value or nullopt)` for each key in order, under the locks of all of them. Atomic.
  void mget(std::span<const std::string_view> keys,
            const std::function<void(std::size_t, std::optional<std::string_view>)>& f);
  // Sets keys[0] = keys[1], keys[2] = keys[3], ... (an even count), clearing their deadlines. Atomic.
  void mset(std::span<const std::string_view> pairs);

  // EXPIRE's options, which combine (XX GT: has a deadline and the new one is later).
  enum ExpireCondition : unsigned { always = 0, nx = 1, xx = 2, gt = 4, lt = 8 };
  // Sets the key's deadline (ms); a deadline not in the future deletes the key. Returns whether
  // the key existed and every condition in `conditions` (ExpireCondition bits) held.
  bool expire_at(std::string_view key, std::int64_t at, unsigned conditions = always);
  // Removes the key's deadline; true if it had one.
  bool persist(std::string_view key);
  // Milliseconds the key has left: -2 if it does not exist, -1 if it has no deadline.
  std::int64_t ttl_ms(std::string_view key);

  // One key under its shard's lock, handed to update()'s callback for the commands that read and
  // change a key in one step (GETEX, APPEND, SETRANGE, INCRBYFLOAT, ...). Valid only inside the
  // callback. An expired key is already gone: exists() is false.
  class Slot {
   public:
    bool exists() const noexcept { return entry_ != nullptr; }
    // The value; exists() only. value_ref() changes it in place.
    std::string_view value() const noexcept;
    std::string& value_ref() noexcept;
    // The deadline in ms, 0 for none; exists() only.
    std::int64_t deadline() const noexcept;
    // Replaces the value, creating the key (without a deadline) if it does not exist; an existing
    // key keeps its deadline.
    void set_value(std::string_view value);
    // Sets the deadline (0: none); exists() only. One not after now() removes the key.
    void set_deadline(std::int64_t at);
    // Removes the key.
    void erase();
    std::int64_t now() const noexcept { return store_.now(); }

   private:
    friend class Store;
    Slot(Store& store, Shard& shard, std::string_view key, Entry* entry)
        : store_(store), shard_(shard), key_(key), entry_(entry) {}
    Store& store_;
    Shard& shard_;
    std::string_view key_;
    Entry* entry_;
  };
  // Calls `f(slot)` for the key with its shard locked and returns what f returns.
  template <class F>
  decltype(auto) update(std::string_view key, F&& f) {
    Shard& s = shard_of(key);
    std::lock_guard lock(s.mutex);
    Slot slot(*this, s, key, find_live(s, key));
    return f(slot);
  }

  // Sets every pair as mset() does if none of the keys exists; returns whether it did. Atomic.
  bool msetnx(std::span<const std::string_view> pairs);
  enum class RenameResult { ok, no_such_key, target_exists };
  // Moves `from`'s value and deadline to `to`, replacing it unless `nx`. Renaming a key to itself
  // changes nothing (target_exists with nx, as Redis's RENAMENX answers 0). Atomic.
  RenameResult rename(std::string_view from, std::string_view to, bool nx);
  // Copies `from`'s value and deadline to `to` (another key), replacing it only if `replace`;
  // returns whether it copied. Atomic.
  bool copy(std::string_view from, std::string_view to, bool replace);
  // Calls `f(key)` for every live key matching the glob `pattern`, with every shard locked.
  void keys(std::string_view pattern, const std::function<void(std::string_view)>& f);
  // SCAN: calls `f(key)` for the live keys in the hash buckets from `cursor` on, one shard at a
  // time, until `count` keys were found or 10 * `count` buckets were walked; returns the cursor to
  // go on from, 0 when the walk is complete. The low 6 bits of a cursor are the shard, the rest
  // the bucket; while the keyspace does not change, a walk from 0 to 0 finds every key once.
  std::uint64_t scan(std::uint64_t cursor, std::size_t count, const std::function<void(std::string_view)>& f);
  // A key picked at random (from a random shard that has keys, then a random bucket), or false
  // if there are none.
  bool random_key(std::string& key);
  // Keys with a deadline, an estimate (INFO's expires=): may count expired keys not swept yet.
  std::size_t with_deadline() const;
  // A new client id (HELLO's id): 1, 2, 3, ... per store, so a server's ids are unique.
  std::uint64_t next_client_id() noexcept { return next_client_id_.fetch_add(1, std::memory_order_relaxed); }
  // Milliseconds on the store's clock since it was made (INFO's uptime).
  std::int64_t uptime_ms() const noexcept { return now() - started_; }

  // Keys stored, including expired ones not reclaimed yet (like Redis's DBSIZE).
  std::size_t size() const;
  // Removes every key.
  void clear();
  // Removes expired keys in up to `buckets` hash buckets of every shard that has keys with a
  // deadline (more in a shard where over a quarter of those examined had expired, up to 16 times
  // as many); returns how many it removed. Bounded work per call, so it can run often.
  std::size_t sweep(std::size_t buckets = 32);

 private:
  struct Entry {
    std::string value;
    std::int64_t expires_at = 0;  // ms, 0 for none
  };
  // Hashes std::string and std::string_view alike. Deliberately not noexcept: libstdc++ then keeps
  // each node's hash code, so a rehash, an erase or a bucket walk never hashes a key again, and a
  // lookup compares strings only when the codes match.
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;
  struct alignas(64) Shard {
    mutable std::mutex mutex;
    Map map;
    std::size_t with_deadline = 0;  // entries whose expires_at is set (may overcount: see sweep)
    std::size_t sweep_cursor = 0;   // the next bucket sweep() examines
  };

  static std::size_t shard_index(std::string_view key) noexcept;
  Shard& shard_of(std::string_view key) noexcept { return shards_[shard_index(key)]; }
  // The live entry for `key`, removing it if it has expired. Called with the shard locked.
  Entry* find_live(Shard& s, std::string_view key);
  // Locks the shards of every key in `keys` (every other one if `stride` is 2), in index order.
  class MultiLock;
  // mset() with the locks held.
  void mset_locked(std::span<const std::string_view> pairs);

  Clock clock_;
  std::int64_t started_;
  std::atomic<std::uint64_t> next_client_id_{1};
  // random_key()'s sequence, per store so that two stores given the same commands pick alike.
  std::atomic<std::uint64_t> random_state_{0};
  std::array<Shard, kShards> shards_;
};

}  // namespace skein_samples::kv
