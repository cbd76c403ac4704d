// chat_server: a line-based TCP chat room, one fiber per client (skein::serve).
//
//   $ chat_server --port 6667 &          $ nc 127.0.0.1 6667
//   listening on 127.0.0.1:6667          * welcome to skein chat; send your nick
//                                        alice
//                                        * joined as alice (1 online)
//                                        * bob joined
//                                        bob: hi alice
//
// A client's first line is its nick; every later line is broadcast as "nick: text" to everyone
// else, with "* nick joined" and "* nick left" announcements. See docs/chat_server.md.
//
// Each client has its own bounded outgoing queue, a Channel<std::string> of --queue lines, drained
// by a writer fiber. Lines are put into the queues with try_send, which never waits: when a
// client's queue is full, that client is not slowing everybody down — it is dropped. Its session
// sends it "* you were too slow; disconnecting" (best effort, within a second) and hangs up, and
// the others see "* nick left (too slow)". Nothing a client does, or fails to do, can make the
// room wait for it.
//
// The room state (nick -> client) is owned by one room fiber, fed through a channel of messages
// (join, say, leave), rather than shared under a skein::Mutex. Why:
//   - leaving must always work, also from a session that is being cancelled (Ctrl-C's grace period
//     over, an error unwinding it): a Mutex's lock is a cancellation point, so a cancelled fiber
//     could not take it to remove itself. Posting a leave is a try_send on an unbounded channel,
//     which neither waits nor throws for a cancel (and there is at most one leave per session, so
//     the unboundedness costs nothing);
//   - one channel gives one order: a client's lines, its join and its leave reach the room in the
//     order the client's session sent them, so "* bob left" never overtakes bob's last line, and
//     every client sees the same interleaving of everyone's lines;
//   - the room fiber yields as soon as a queue it fed is more than half full, so the writers on
//     its worker drain their queues before it fills them further: a burst of lines from one
//     client cannot overflow the queue of a client that keeps up merely because its writer
//     shares the room's worker (and below half, lines that pile up go out in fewer writes);
//   - chat lines still have a bound: a session takes one of a fixed number of permits (a
//     Semaphore) before it posts a line and the room returns it once the line is broadcast, so a
//     client that floods the room is slowed down by TCP back-pressure (its session stops reading)
//     rather than growing the room's backlog.
// The price is one hop per line and every fan-out on the room fiber's worker; a fan-out is a
// try_send per member (a lock, a push, perhaps a wake-up), which is cheap next to the writes.
//
// A session is three fibers: the connection's own (the parent) and, in a TaskGroup, a reader
// (lines in, to the room) and a writer (queue out, to the socket). The parent waits until one of
// them ends or the room drops the client, cancels the other, and says goodbye if the server ended
// it.
//
// Limits: --max-line (a longer line gets "* line too long (max N bytes); disconnecting"),
// --max-clients (one more gets "* room is full (N clients); try again later"), and nick rules: 1
// to 32 letters, digits, '-', '_' or '.', unique in the room. An invalid or taken nick gets a
// message and another try, three tries in all; a client that sends no nick within 30 s is
// disconnected.

#include <skein/skein.hpp>

#include "cli.hpp"
#include "io_check.hpp"
#include "serve_main.hpp"

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: chat_server [--host H] [--port P] [--threads N] [--queue N] [--max-line N]\n"
    "                   [--max-clients N] [--debug-dump[=SIG]]\n"
    "\n"
    "A line-based chat room over TCP (try it with nc). A client's first line is its nick (1 to 32\n"
    "letters, digits, '-', '_' or '.'; unique; three tries); every later line is sent to everyone\n"
    "else as 'nick: text', and joins and leaves are announced. A client that does not keep up\n"
    "with what is sent to it is dropped with a message, so it never holds up the others. Prints\n"
    "'listening on HOST:PORT' once it accepts connections. Ctrl-C or SIGTERM stops it: it stops\n"
    "accepting, gives open connections a second, and exits 0.\n"
    "\n"
    "  --host H          address to listen on, an IP literal or a name; default 127.0.0.1\n"
    "  --port P          TCP port, 0..65535 (0 picks a free one); default 6667\n"
    "  --threads N       worker threads serving connections, 1..256; default 1\n"
    "  --queue N         lines waiting to be written to one client before it counts as too\n"
    "                    slow and is dropped, 1..1000000; default 64\n"
    "  --max-line N      longest line a client may send, in bytes without the line ending,\n"
    "                    32..1048576; a longer one disconnects it; default 1024\n"
    "  --max-clients N   clients in the room at once, 1..1000000; default 1024\n"
    "  --debug-dump[=SIG]  print every fiber (what it waits for, since when, where it was\n"
    "                      spawned) to stderr on signal SIG, SIGUSR1 (the default), SIGUSR2\n"
    "                      or SIGQUIT, and go on serving: try kill -USR1 PID\n"
    "  -h, --help        show this help and exit\n";

constexpr std::size_t kMaxNick = 32;
constexpr int kNickTries = 3;
constexpr std::chrono::seconds kNickTimeout{30};
constexpr std::chrono::milliseconds kFarewellTimeout{1000};  // for the last line to a dropped client
constexpr std::chrono::milliseconds kLingerTimeout{500};     // reading what it still sends, after
constexpr std::size_t kLingerBytes = 64 * 1024;
constexpr std::size_t kWriteBatch =
    16 * 1024;                             // a writer sends the queued lines up to this many bytes at once
constexpr std::size_t kChatBacklog = 256;  // lines posted to the room and not yet broadcast
constexpr std::size_t kPendingSlack = 64;  // connections past --max-clients (choosing a nick, or
                                           // being told the room is full)

struct Limits {
  std::size_t queue = 64;
  std::size_t max_line = 1024;
  std::size_t max_clients = 1024;
};

// A member of the room, shared by its session's fibers and the room fiber (on any workers).
struct Client {
  Client(std::string n, std::size_t queue) : nick(std::move(n)), out(queue) {}
  const std::string nick;
  skein::Channel<std::string> out;    // lines to send it, each ending in '\n'
  skein::Event ended;                 // set when the session should end (see session())
  std::atomic<bool> too_slow{false};  // the room dropped it: its queue was full
};
using ClientPtr = std::shared_ptr<Client>;

enum class JoinResult { joined, taken, full };

// The room: its members, owned by the fiber running run(); the sessions talk to it through
// join(), say() and leave(), from any worker.
class Room {
 public:
  explicit Room(std::size_t max_clients) : max_clients_(max_clients), chat_permits_(kChatBacklog) {}

  // Adds `c` under its nick, unless the nick is taken or the room is full. On success its queue
  // already holds the welcome line and the others have been told.
  JoinResult join(const ClientPtr& c) {
    skein::Promise<JoinResult> reply;
    skein::Future<JoinResult> result = reply.get_future();
    Message m{Join{c, std::move(reply)}};
    inbox_.try_send(m);  // unbounded: never waits (throws broken_pipe once the room is closed)
    return result.get();
  }

  // Broadcasts "nick: text" to everyone but `from`. Waits while kChatBacklog lines are pending.
  void say(const ClientPtr& from, std::string text) {
    chat_permits_.acquire();
    Message m{Say{from, std::move(text)}};
    try {
      inbox_.try_send(m);
    } catch (...) {
      chat_permits_.release();
      throw;
    }
  }

  // Removes `c` if it is still a member, announcing "* nick left" + why. Never waits or throws, so
  // it works from a cancelled fiber and from destructors.
  void leave(const ClientPtr& c, std::string why) noexcept {
    try {
      Message m{Leave{c, std::move(why)}};
      inbox_.try_send(m);
    } catch (...) {
      // The room is closed (the server is down) or out of memory: nobody is left to tell.
    }
  }

  // Makes run() return once it has handled what was posted so far.
  void close() noexcept { inbox_.close(); }

  // The room fiber.
  void run() {
    for (Message&& m : inbox_) {
      if (auto* j = std::get_if<Join>(&m)) {
        handle(*j);
      } else if (auto* s = std::get_if<Say>(&m)) {
        if (is_member(*s->from)) broadcast(s->from->nick + ": " + s->text + "\n", s->from.get());
        chat_permits_.release();
      } else {
        auto& l = std::get<Leave>(m);
        if (is_member(*l.client)) {
          members_.erase(l.client->nick);
          l.client->out.close();
          broadcast("* " + l.client->nick + " left" + l.why + "\n", nullptr);
        }
      }
      // A queue past half full: let the writers on this worker drain theirs before the next
      // fan-out. (Otherwise keep going: lines that pile up meanwhile go out in fewer writes.)
      if (std::exchange(crowded_, false)) skein::yield();
    }
  }

 private:
  struct Join {
    ClientPtr client;
    skein::Promise<JoinResult> reply;
  };
  struct Say {
    ClientPtr from;
    std::string text;
  };
  struct Leave {
    ClientPtr client;
    std::string why;
  };
  using Message = std::variant<Join, Say, Leave>;

  bool is_member(const Client& c) const {
    const auto it = members_.find(c.nick);
    return it != members_.end() && it->second.get() == &c;
  }

  void handle(Join& j) {
    const ClientPtr& c = j.client;
    if (members_.size() >= max_clients_) {
      j.reply.set_value(JoinResult::full);
    } else if (members_.contains(c->nick)) {
      j.reply.set_value(JoinResult::taken);
    } else {
      members_.emplace(c->nick, c);
      // A fresh queue has room for one line at least: the welcome is always the first it gets.
      c->out.try_send("* joined as " + c->nick + " (" + std::to_string(members_.size()) + " online)\n");
      broadcast("* " + c->nick + " joined\n", c.get());
      j.reply.set_value(JoinResult::joined);
    }
  }

  // Queues `line` for every member but `except`. A member whose queue is full is dropped, and
  // that is announced in turn (which may drop more).
  void broadcast(std::string line, const Client* except) {
    std::deque<std::pair<std::string, const Client*>> pending;
    pending.emplace_back(std::move(line), except);
    std::vector<ClientPtr> full;
    while (!pending.empty()) {
      auto [text, skip] = std::move(pending.front());
      pending.pop_front();
      for (const auto& [nick, member] : members_) {
        if (member.get() == skip) continue;
        std::string copy = text;
        if (!member->out.try_send(copy))
          full.push_back(member);
        else if (member->out.size() * 2 > member->out.capacity())
          crowded_ = true;
      }
      for (const ClientPtr& c : full) {
        members_.erase(c->nick);
        c->too_slow.store(true);
        c->out.close();
        c->ended.set();  // its session stops its reader and writer, and says goodbye
        pending.emplace_back("* " + c->nick + " left (too slow)\n", nullptr);
      }
      full.clear();
    }
  }

  const std::size_t max_clients_;
  skein::Channel<Message> inbox_{skein::unbounded};
  skein::Semaphore chat_permits_;
  std::unordered_map<std::string, ClientPtr> members_;  // the room fiber's alone, as is
  bool crowded_ = false;                                // a queue is more than half full
};

// ---- one connection -----------------------------------------------------------------------------

bool valid_nick(std::string_view nick) {
  if (nick.empty() || nick.size() > kMaxNick) return false;
  for (const char ch : nick) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    ch == '-' || ch == '_' || ch == '.';
    if (!ok) return false;
  }
  return true;
}

// A received line without its line ending ("\n" or "\r\n"), control characters shown as '?' so
// nobody can drive the others' terminals.
std::string clean(std::string_view line) {
  if (line.ends_with('\n')) line.remove_suffix(1);
  if (line.ends_with('\r')) line.remove_suffix(1);
  std::string out(line);
  for (char& ch : out)
    if ((static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7f) ch = '?';
  return out;
}

std::string too_long_text(const Limits& lim) {
  return "* line too long (max " + std::to_string(lim.max_line) + " bytes); disconnecting\n";
}

// The last words to a client the server disconnects, best effort: `text` within a second, then
// the write side closed, and what the client still sends read and dropped for a moment, so that
// closing does not reset the connection before it has read `text`.
void goodbye(skein::Stream& s, std::string_view text) noexcept {
  try {
    s.write_all(text, kFarewellTimeout);
    s.shutdown(skein::Shutdown::write);
    const skein::Deadline until(kLingerTimeout);
    char buf[4096];
    std::size_t total = 0;
    while (total < kLingerBytes) {
      const std::size_t n = s.read(buf, until);
      if (n == 0) break;
      total += n;
    }
  } catch (const std::exception&) {
    // It is gone, or not reading, or the server is stopping: it was best effort.
  }
}

// Posts the session's leave however it ends (the room ignores the leave of a non-member).
struct Membership {
  Room& room;
  ClientPtr client;
  std::string why;
  void leave() noexcept {
    if (client) room.leave(std::exchange(client, nullptr), std::move(why));
  }
  ~Membership() { leave(); }
};

// Reads the nick and joins the room; nullptr if the client did not make it in (it has been told
// why, or it left).
ClientPtr enter(skein::Stream& s, skein::BufferedReader& r, Room& room, const Limits& lim, Membership& m) {
  const skein::Deadline deadline(kNickTimeout);
  s.write_all("* welcome to skein chat; send your nick\n", deadline);
  for (int attempt = 1;; ++attempt) {
    std::string line;
    try {
      line = r.read_line(lim.max_line + 2, deadline);
    } catch (const std::system_error& e) {
      if (e.code() == skein::net_errc::too_long) {
        goodbye(s, too_long_text(lim));
        return nullptr;
      }
      if (e.code() == std::errc::timed_out) {
        goodbye(s, "* no nick within " + std::to_string(kNickTimeout.count()) + " s; disconnecting\n");
        return nullptr;
      }
      throw;
    }
    if (!line.ends_with('\n')) return nullptr;  // it hung up
    std::string nick = clean(line);
    if (nick.size() > lim.max_line) {
      goodbye(s, too_long_text(lim));
      return nullptr;
    }
    std::string refusal;
    if (!valid_nick(nick)) {
      if (nick.size() > 40) nick = nick.substr(0, 40) + "...";
      refusal = "* invalid nick '" + nick + "': use 1 to " + std::to_string(kMaxNick) +
                " letters, digits, '-', '_' or '.'";
    } else {
      auto c = std::make_shared<Client>(nick, lim.queue);
      m.client = c;  // from here on, however the session ends, it leaves
      switch (room.join(c)) {
        case JoinResult::joined:
          return c;
        case JoinResult::full:
          m.client = nullptr;
          goodbye(s, "* room is full (" + std::to_string(lim.max_clients) + " clients); try again later\n");
          return nullptr;
        case JoinResult::taken:
          m.client = nullptr;
          refusal = "* nick '" + nick + "' is taken";
          break;
      }
    }
    if (attempt == kNickTries) {
      goodbye(s, refusal + "; disconnecting\n");
      return nullptr;
    }
    s.write_all(refusal + "; try another\n", deadline);
  }
}

enum class End { hung_up, too_long };

// The reader: every line to the room, until the client hangs up or sends a line too long.
End read_lines(skein::BufferedReader& r, Room& room, const ClientPtr& c, const Limits& lim) {
  for (;;) {
    std::string line;
    try {
      line = r.read_line(lim.max_line + 2);
    } catch (const std::system_error& e) {
      if (e.code() == skein::net_errc::too_long) return End::too_long;
      throw;
    }
    if (line.empty()) return End::hung_up;
    const bool last = !line.ends_with('\n');  // a final line without a line ending
    std::string text = clean(line);
    if (text.size() > lim.max_line) return End::too_long;
    if (!text.empty()) room.say(c, std::move(text));
    if (last) return End::hung_up;
  }
}

// What the writer is sending: `data`, of which `written` bytes are out. Read by the session once
// the writer has stopped, to finish a line it was cut off in.
struct Pending {
  std::string data;
  std::size_t written = 0;

  // The rest of a line that went out in part, or "".
  std::string rest_of_line() const {
    if (written == 0 || written >= data.size()) return {};
    const std::string_view rest = std::string_view(data).substr(written);
    return std::string(rest.substr(0, rest.find('\n') + 1));
  }
};

// The writer: the client's queue to its socket, as many queued lines per write as there are (up to
// kWriteBatch bytes), until the queue is closed.
void write_lines(skein::Stream& s, Client& c, Pending& p) {
  while (std::optional<std::string> line = c.out.recv()) {
    p.data = std::move(*line);
    p.written = 0;
    while (p.data.size() < kWriteBatch) {
      std::optional<std::string> more = c.out.try_recv();
      if (!more) break;
      p.data += *more;
    }
    while (p.written < p.data.size()) p.written += s.write(std::string_view(p.data).substr(p.written));
    p.data.clear();
    p.written = 0;
  }
}

void session(skein::Stream stream, Room& room, const Limits& lim) {
  skein::BufferedReader reader(stream, 4096);
  Membership membership{room, nullptr, {}};
  const ClientPtr client = enter(stream, reader, room, lim, membership);
  if (!client) return;

  struct SetOnExit {
    skein::Event& e;
    ~SetOnExit() { e.set(); }
  };
  End end = End::hung_up;
  Pending pending;
  {
    // Both children run on this worker, where the socket is waited on. A child's error ends the
    // session (the group cancels the other and join() rethrows it); ~TaskGroup makes sure neither
    // outlives this scope whatever happens, including this fiber being cancelled in wait().
    skein::TaskGroup group;
    group.spawn(skein::FiberOptions{"chat reader"}, [&] {
      SetOnExit set{client->ended};
      end = read_lines(reader, room, client, lim);
    });
    group.spawn(skein::FiberOptions{"chat writer"}, [&] {
      SetOnExit set{client->ended};
      write_lines(stream, *client, pending);
    });
    client->ended.wait();  // the reader or the writer ended, or the room dropped the client
    group.cancel();
    group.join();
  }
  if (client->too_slow.load()) {
    // The room has announced it already. Whatever was still queued is dropped with it.
    goodbye(stream, pending.rest_of_line() + "* you were too slow; disconnecting\n");
  } else if (end == End::too_long) {
    membership.why = " (line too long)";
    membership.leave();
    goodbye(stream, pending.rest_of_line() + too_long_text(lim));
  }
  // Otherwise the client hung up: ~Membership announces it.
}

// Lets the process have `wanted` descriptors open if the hard limit allows (Go's runtime does the
// same at start-up): a room of a thousand clients needs more than the usual soft limit of 1024.
void raise_fd_limit(std::size_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= wanted) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= wanted ? wanted : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= wanted) return;
  std::fprintf(stderr,
               "chat_server: warning: only %llu file descriptors allowed (RLIMIT_NOFILE), %zu wanted for "
               "--max-clients; connections past the limit wait\n",
               static_cast<unsigned long long>(rl.rlim_cur), wanted);
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "chat_server";
  skein_samples::ServerFlags flags(6667);
  Limits lim;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (flags.parse(i, argc, argv)) {
    } else if (cli::option("--queue", i, argc, argv, value)) {
      lim.queue = cli::number<std::size_t>("--queue", value, 1, 1'000'000);
    } else if (cli::option("--max-line", i, argc, argv, value)) {
      lim.max_line = cli::number<std::size_t>("--max-line", value, 32, 1 << 20);
    } else if (cli::option("--max-clients", i, argc, argv, value)) {
      lim.max_clients = cli::number<std::size_t>("--max-clients", value, 1, 1'000'000);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  cli::check_io_backend();
  // The connections, plus each worker's epoll, eventfd, listener and a few to spare.
  raise_fd_limit(lim.max_clients + kPendingSlack + 16 + 4 * flags.threads);

  try {
    skein::run(flags.runtime_options(), [&] {
      Room room(lim.max_clients);
      skein::TaskGroup room_fiber;  // destroyed before `room`: the fiber cannot outlive it
      room_fiber.spawn(skein::FiberOptions{"room"}, [&room] { room.run(); });
      struct CloseRoom {
        Room& room;
        ~CloseRoom() { room.close(); }
      } close_room{room};

      skein::ServeOptions options;
      options.stop_on_signals = true;
      options.grace_period = std::chrono::seconds(1);
      // serve() splits this cap evenly over the workers' SO_REUSEPORT listeners, while the kernel
      // spreads connections over them by a hash, unevenly: each worker's share must be able to
      // take the whole room, or a worker that got more than its share stops accepting while the
      // room has space. The room enforces --max-clients itself.
      options.max_connections = (lim.max_clients + kPendingSlack) * flags.threads;
      options.on_listening = [](const skein::Address& bound) {
        std::printf("listening on %s\n", bound.to_string().c_str());
        std::fflush(stdout);
      };
      skein::serve(
          skein_samples::listen_address(flags.host, flags.port),
          [&room, &lim](skein::Stream stream) { session(std::move(stream), room, lim); }, options);
      // Every session has ended: the room has nobody left.
      room.close();
      room_fiber.join();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chat_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
