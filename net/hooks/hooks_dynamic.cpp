// The part of the hooks only a dynamically linked program carries (skein_hooks_dep): the
// getaddrinfo symbol itself, which reaches libc's through dlsym(RTLD_NEXT) on first use, and the
// check that a name resolves to its hook for shared libraries. A static program links
// skein_hooks_static_dep instead, which uses -Wl,--wrap=getaddrinfo (docs/hooks.md).
#include <dlfcn.h>
#include <netdb.h>

#include <atomic>
#include <cstring>

extern "C" int __wrap_getaddrinfo(const char*, const char*, const addrinfo*, addrinfo**);

extern "C" {

int getaddrinfo(const char* node, const char* service, const struct addrinfo* hints, struct addrinfo** res) {
  return __wrap_getaddrinfo(node, service, hints, res);
}

// libc's getaddrinfo (or the next interposer's, e.g. a sanitizer's), looked up on the first call
// rather than at start-up: dlsym may allocate, and nothing of the hooks runs before main.
void* skein_hooks_next_getaddrinfo() {
  static std::atomic<void*> next{nullptr};
  void* f = next.load(std::memory_order_acquire);
  if (!f) {
    f = dlsym(RTLD_NEXT, "getaddrinfo");
    next.store(f, std::memory_order_release);
  }
  return f;
}

// 1 if `name` resolves, in the global scope shared libraries bind to, to `hook` (getaddrinfo: to
// the definition above), 0 if elsewhere.
int skein_hooks_resolves_to_hook(const char* name, void* hook) {
  if (std::strcmp(name, "getaddrinfo") == 0) hook = reinterpret_cast<void*>(&getaddrinfo);
  return hook && dlsym(RTLD_DEFAULT, name) == hook ? 1 : 0;
}

}  // extern "C"
