#include <skein/buffered_reader.hpp>

#include <algorithm>
#include <cstring>
#include <system_error>

namespace skein {

BufferedReader::BufferedReader(StreamRef stream, std::size_t chunk)
    : stream_(stream), chunk_(std::max<std::size_t>(chunk, 1)) {}

bool BufferedReader::fill(Deadline deadline) {
  if (begin_ == end_) begin_ = end_ = 0;
  if (buf_.size() - end_ < chunk_) {
    // Move what is left to the front before growing: a long-lived reader keeps one chunk or so.
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (buf_.size() - end_ < chunk_) buf_.resize(end_ + chunk_);
  }
  const std::size_t n = stream_.read(std::span<char>(buf_.data() + end_, buf_.size() - end_), deadline);
  end_ += n;
  return n > 0;
}

std::string BufferedReader::read_until(char delimiter, std::size_t max, Deadline deadline) {
  std::size_t scanned = 0;  // bytes of the buffered data already searched
  for (;;) {
    const std::string_view have = buffered();
    const std::size_t limit = std::min(have.size(), max);
    // (memchr must not see the null data() of a reader that has not buffered anything yet)
    const void* hit =
        limit > scanned ? std::memchr(have.data() + scanned, delimiter, limit - scanned) : nullptr;
    if (hit) {
      const std::size_t n = static_cast<const char*>(hit) - have.data() + 1;
      std::string out(have.substr(0, n));
      begin_ += n;
      return out;
    }
    if (have.size() >= max)
      throw std::system_error(make_error_code(net_errc::too_long), "skein::BufferedReader::read_until");
    scanned = have.size();
    if (!fill(deadline)) {
      std::string out(buffered());
      begin_ = end_ = 0;
      return out;
    }
  }
}

std::size_t BufferedReader::read(std::span<char> buf, Deadline deadline) {
  if (buf.empty()) return 0;
  if (begin_ == end_) {
    // Nothing buffered: a large read goes straight to the stream, without a copy.
    if (buf.size() >= chunk_) return stream_.read(buf, deadline);
    if (!fill(deadline)) return 0;
  }
  const std::size_t n = std::min(buf.size(), end_ - begin_);
  std::memcpy(buf.data(), buf_.data() + begin_, n);
  begin_ += n;
  return n;
}

void BufferedReader::read_exact(std::span<char> buf, Deadline deadline) {
  while (!buf.empty()) {
    const std::size_t n = read(buf, deadline);
    if (n == 0)
      throw std::system_error(make_error_code(net_errc::end_of_stream), "skein::BufferedReader::read_exact");
    buf = buf.subspan(n);
  }
}

}  // namespace skein
