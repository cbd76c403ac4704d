#include <skein/net_error.hpp>

#include <netdb.h>

#include <string>

namespace skein {

namespace {

class NetCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "skein.net"; }
  std::string message(int value) const override {
    switch (static_cast<net_errc>(value)) {
      case net_errc::end_of_stream:
        return "end of stream before the expected bytes";
      case net_errc::too_long:
        return "longer than the maximum length";
      case net_errc::closed:
        return "socket closed while waiting on it";
    }
    return "unknown skein.net error " + std::to_string(value);
  }
};

class ResolveCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "skein.resolve"; }
  std::string message(int value) const override { return gai_strerror(value); }
};

}  // namespace

const std::error_category& net_category() noexcept {
  static const NetCategory category;
  return category;
}

const std::error_category& resolve_category() noexcept {
  static const ResolveCategory category;
  return category;
}

}  // namespace skein
