// Dump on a signal (RuntimeOptions::dump_signal): the handler only writes a byte to a pipe; one
// thread per process reads it and prints skein::debug::dump to stderr. See docs/observability.md.
#pragma once

namespace skein::detail {

// Makes `sig` print the dump for as long as a holder keeps it: the first holder of a signal
// installs the handler (remembering the disposition it replaces), the first holder of any starts
// the dumping thread. 0 holds nothing. Throws std::system_error: invalid_argument for a signal
// that cannot be caught or that skein needs (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGKILL, SIGSTOP,
// out of range), or what pipe/sigaction/thread creation reported.
void hold_dump_signal(int sig);
// Undoes one hold_dump_signal(sig): the last holder of `sig` restores the disposition it found,
// the last holder of any signal stops the thread. 0 does nothing.
void release_dump_signal(int sig) noexcept;

}  // namespace skein::detail
