// A non-owning reference to any byte stream with Stream's read and write calls (a Stream, a
// TlsStream, a test double), so that code written once -- BufferedReader, a protocol handler --
// serves plain and TLS connections alike.
//
// The stream's own calls stay direct: only code that goes through a StreamRef pays one indirect
// call per read or write. Errors are those of the referenced stream's calls (docs/errors.md).
//
// Also ByteReads, ByteWrites and ByteReadsWrites: mixins (CRTP) that give a stream with char
// read/write calls their std::byte and unsigned char forms, written once for Stream, TlsStream
// and BufferedReader.
#pragma once

#include <skein/net_error.hpp>
#include <skein/time.hpp>

#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace skein {

namespace detail {
// Byte buffers as the char buffers the calls take (char may alias any object).
inline std::span<char> as_chars(std::span<std::byte> b) noexcept {
  return {reinterpret_cast<char*>(b.data()), b.size()};
}
inline std::span<char> as_chars(std::span<unsigned char> b) noexcept {
  return {reinterpret_cast<char*>(b.data()), b.size()};
}
inline std::string_view as_view(std::span<const std::byte> b) noexcept {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
inline std::string_view as_view(std::span<const unsigned char> b) noexcept {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
}  // namespace detail

// The byte-buffer forms (std::byte and unsigned char spans) of a stream's read() and
// read_exact(), for a class D whose own take std::span<char>: `class D : public ByteReads<D>`,
// with `using ByteReads<D>::read; using ByteReads<D>::read_exact;` beside its own. Each does what
// the char form does.
template <class D>
class ByteReads {
 public:
  std::size_t read(std::span<std::byte> buf, Deadline deadline = {}) {
    return self().read(detail::as_chars(buf), deadline);
  }
  std::size_t read(std::span<unsigned char> buf, Deadline deadline = {}) {
    return self().read(detail::as_chars(buf), deadline);
  }
  void read_exact(std::span<std::byte> buf, Deadline deadline = {}) {
    self().read_exact(detail::as_chars(buf), deadline);
  }
  void read_exact(std::span<unsigned char> buf, Deadline deadline = {}) {
    self().read_exact(detail::as_chars(buf), deadline);
  }

 private:
  D& self() noexcept { return static_cast<D&>(*this); }
};

// The same for write() and write_all() taking std::string_view, and for both directions.
template <class D>
class ByteWrites {
 public:
  std::size_t write(std::span<const std::byte> data, Deadline deadline = {}) {
    return self().write(detail::as_view(data), deadline);
  }
  std::size_t write(std::span<const unsigned char> data, Deadline deadline = {}) {
    return self().write(detail::as_view(data), deadline);
  }
  void write_all(std::span<const std::byte> data, Deadline deadline = {}) {
    self().write_all(detail::as_view(data), deadline);
  }
  void write_all(std::span<const unsigned char> data, Deadline deadline = {}) {
    self().write_all(detail::as_view(data), deadline);
  }

 private:
  D& self() noexcept { return static_cast<D&>(*this); }
};

template <class D>
class ByteReadsWrites : public ByteReads<D>, public ByteWrites<D> {};

// What a StreamRef can refer to: read() returns at least one byte (0 at end of stream or for an
// empty buffer), write() writes at least one (0 only for empty data), both take a Deadline.
template <class S>
concept ByteStream = requires(S& s, std::span<char> buf, std::string_view data, Deadline deadline) {
  { s.read(buf, deadline) } -> std::same_as<std::size_t>;
  { s.write(data, deadline) } -> std::same_as<std::size_t>;
};

class StreamRef {
 public:
  // Refers to `stream`, which must outlive every use of this reference. Implicit, as binding a
  // reference is. (Not for another StreamRef: that is the copy constructor's.)
  template <ByteStream S, std::enable_if_t<!std::is_same_v<std::remove_cv_t<S>, StreamRef>, int> = 0>
  StreamRef(S& stream) noexcept  // NOLINT(google-explicit-constructor)
      : object_(&stream),
        read_([](void* o, std::span<char> buf, Deadline d) { return static_cast<S*>(o)->read(buf, d); }),
        write_(
            [](void* o, std::string_view data, Deadline d) { return static_cast<S*>(o)->write(data, d); }) {}

  // The referenced stream's read(): at least one byte, 0 at end of stream.
  std::size_t read(std::span<char> buf, Deadline deadline = {}) const {
    return read_(object_, buf, deadline);
  }
  // Reads exactly buf.size() bytes; throws net_errc::end_of_stream if the stream ends first.
  void read_exact(std::span<char> buf, Deadline deadline = {}) const {
    while (!buf.empty()) {
      const std::size_t n = read(buf, deadline);
      if (n == 0)
        throw std::system_error(make_error_code(net_errc::end_of_stream), "skein::StreamRef::read_exact");
      buf = buf.subspan(n);
    }
  }
  // The referenced stream's write(): at least one byte, 0 only for empty data.
  std::size_t write(std::string_view data, Deadline deadline = {}) const {
    return write_(object_, data, deadline);
  }
  // Writes all of `data`, one write() after another.
  void write_all(std::string_view data, Deadline deadline = {}) const {
    while (!data.empty()) data.remove_prefix(write(data, deadline));
  }

 private:
  void* object_;
  std::size_t (*read_)(void*, std::span<char>, Deadline);
  std::size_t (*write_)(void*, std::string_view, Deadline);
};

}  // namespace skein
