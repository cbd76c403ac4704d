// A buffered reader over a byte stream (a Stream, a TlsStream: see StreamRef): lines and delimited records
// (asyncio's StreamReader.readline / readuntil, Go's bufio.Reader).
//
// Errors: those of Stream::read, plus net_errc::too_long when no delimiter arrives within the
// maximum length (the bytes read so far stay buffered).
#pragma once

#include <skein/byte_stream.hpp>
#include <skein/socket.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace skein {

class BufferedReader : public ByteReads<BufferedReader> {
 public:
  // Reads from `stream` (a Stream, a TlsStream, ...), which must outlive the reader, `chunk` bytes
  // at a time.
  explicit BufferedReader(StreamRef stream, std::size_t chunk = 16 * 1024);

  // Returns the bytes up to and including `delimiter`. At end of stream returns what is left
  // (without a delimiter; "" once nothing is left). Throws net_errc::too_long if `max` bytes
  // pass without one.
  std::string read_until(char delimiter, std::size_t max = 64 * 1024, Deadline deadline = {});
  // read_until('\n').
  std::string read_line(std::size_t max = 64 * 1024, Deadline deadline = {}) {
    return read_until('\n', max, deadline);
  }
  // Reads up to buf.size() bytes, from the buffer first; 0 at end of stream.
  std::size_t read(std::span<char> buf, Deadline deadline = {});
  // Reads exactly buf.size() bytes; throws net_errc::end_of_stream if the stream ends first.
  void read_exact(std::span<char> buf, Deadline deadline = {});
  // The same on byte buffers (<skein/byte_stream.hpp>).
  using ByteReads<BufferedReader>::read;
  using ByteReads<BufferedReader>::read_exact;

  // The bytes read from the stream but not yet returned.
  std::string_view buffered() const noexcept { return {buf_.data() + begin_, end_ - begin_}; }

 private:
  // Reads more from the stream into the buffer; returns false at end of stream.
  bool fill(Deadline deadline);

  StreamRef stream_;
  std::size_t chunk_;
  std::vector<char> buf_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace skein
