# skein-gdb.py: gdb commands for skein's fibers, on a live process or a core file.
#
#   (gdb) source /usr/local/share/skein/gdb/skein-gdb.py
#   (gdb) skein fibers [TEXT]      every fiber of every runtime (only the lines containing TEXT)
#   (gdb) skein bt ID [BT-OPTIONS] a parked or ready fiber's backtrace (ID: 13, #13, 2:13 for
#                                  fiber 13 of runtime 2, or a fiber's name if no other has it;
#                                  BT-OPTIONS go to gdb's bt: full, -frame-arguments none, 10...)
#   (gdb) skein bt all [BT-OPTIONS] every fiber's
#   (gdb) skein fiber ID           show fiber ID's stack in place of the selected thread's, so that
#                                  bt, frame N, info locals, up, down... work on it
#   (gdb) skein fiber off          back to the thread's own stack
#
# Needs the debug information of skein's library (-g, as the debugoptimized and debug build types
# give): the script reads the records through their C++ types. It reads memory only, never
# writes it, never runs code in the process and never changes a register: a parked fiber's stack is
# shown by a gdb unwinder (gdb.unwinder) that puts the fiber's saved registers in place of the
# caller of the selected thread's innermost frame, which works on core files too.
#
# What it reads is described in docs/observability.md ("Layout for debuggers"); the saved-frame
# layouts below follow asm/frame_x86_64_sysv.h, asm/frame_aarch64_aapcs.h and, for Boost.Context's
# fcontext, runtime/src/backtrace.cpp.

import re
import struct
import time

import gdb
import gdb.unwinder

# The frame a suspended context's handle (its saved stack pointer) points at: offset of each saved
# register, the frame's size (the stack pointer the context resumes with is handle + size), and
# where the resume address lies.
_LAYOUTS = {
    # skein's switch_x86_64_sysv_elf.S and Boost.Context's jump_x86_64_sysv_elf_gas.S agree.
    ("x86_64", "asm"): {
        "size": 0x40,
        "pc": 0x38,
        "regs": {"r12": 0x08, "r13": 0x10, "r14": 0x18, "r15": 0x20, "rbx": 0x28, "rbp": 0x30},
    },
    ("aarch64", "asm"): {
        "size": 0xB0,
        "pc": 0x68,  # it resumes where its saved LR points
        "regs": dict(
            [("x%d" % (19 + i), 0x10 + 8 * i) for i in range(10)] + [("x29", 0x60), ("x30", 0x68)]
        ),
    },
    # Boost.Context's jump_arm64_aapcs_elf_gas.S: D8-D15 at 0, X19-X30 from 0x40, the resume
    # address once more at 0xa0.
    ("aarch64", "boost"): {
        "size": 0xB0,
        "pc": 0xA0,
        "regs": dict(
            [("x%d" % (19 + i), 0x40 + 8 * i) for i in range(10)] + [("x29", 0x90), ("x30", 0x98)]
        ),
    },
}
_LAYOUTS[("x86_64", "boost")] = _LAYOUTS[("x86_64", "asm")]

_SP = {"x86_64": "rsp", "aarch64": "sp"}
_PC = {"x86_64": "rip", "aarch64": "pc"}

# skein::debug::to_string(WaitReason): the names the dump prints.
_REASON_TEXT = {
    "none": "",
    "fd_read": "fd read",
    "fd_write": "fd write",
    "channel_recv": "channel recv",
    "channel_send": "channel send",
    "wait_group": "wait group",
    "hooked_call": "hooked call",
}
_STATES = {0: "ready", 1: "running", 2: "parked", 3: "done"}
# The functions a fresh context's saved frame resumes in: such a fiber has not started yet.
_ENTRY_SYMBOLS = ("skein_context_entry", "make_fcontext")


class SkeinError(gdb.GdbError):
    pass


# ---------------------------------------------------------------------------------------------
# Reading the records.


def _arch():
    name = gdb.selected_inferior().architecture().name()
    if "x86-64" in name:
        return "x86_64"
    if "aarch64" in name:
        return "aarch64"
    raise SkeinError("skein: no saved-frame layout for the architecture %s" % name)


def _has_symbol(name):
    try:
        gdb.parse_and_eval("(long)&%s" % name)
        return True
    except gdb.error:
        return False


class _ContextParameter(gdb.Parameter):
    """Which switch saved the fibers' contexts: asm (skein's own assembly), boost (Boost.Context's
    fcontext, -Dcontext=boost) or auto (the one the program links: skein_jump_fcontext or
    jump_fcontext). Matters on AArch64 only: on x86-64 both save the same frame."""

    set_doc = "Set the context switch skein was built with (auto, asm, boost)."
    show_doc = "Show the context switch skein was built with."

    def __init__(self):
        super().__init__("skein-context", gdb.COMMAND_DATA, gdb.PARAM_ENUM, ["auto", "asm", "boost"])
        self.value = "auto"

    def get_show_string(self, value):
        return "skein's context switch: %s" % value


_context_param = _ContextParameter()


def _backend():
    if _context_param.value != "auto":
        return _context_param.value
    if _has_symbol("skein_jump_fcontext"):
        return "asm"
    if _has_symbol("jump_fcontext"):
        return "boost"
    return "asm"


def _layout():
    return _LAYOUTS[(_arch(), _backend())]


def _field_offsets(t, prefix="", out=None):
    """Byte offsets of every data member of struct type `t`, base classes' included, by name."""
    if out is None:
        out = {}
    for f in t.strip_typedefs().fields():
        if not hasattr(f, "bitpos") or f.bitpos is None:
            continue  # static members
        off = f.bitpos // 8
        if f.is_base_class:
            sub = {}
            _field_offsets(f.type, "", sub)
            for k, v in sub.items():
                out.setdefault(prefix + k, v + off)
            continue
        if f.name:
            out[prefix + f.name] = off
    return out


def _offset(t, path):
    """Byte offset of the member `path` ("a.b.c") inside type `t`."""
    off = 0
    for part in path.split("."):
        fields = _field_offsets(t)
        if part not in fields:
            raise SkeinError("skein: %s has no member %s (a skein version this script does not know?)" % (t, part))
        off += fields[part]
        t = _member_type(t, part)
    return off


def _member_type(t, name):
    t = t.strip_typedefs()
    for f in t.fields():
        if f.name == name:
            return f.type
        if f.is_base_class:
            try:
                return _member_type(f.type, name)
            except KeyError:
                pass
    raise KeyError(name)


def _type(name):
    try:
        return gdb.lookup_type(name)
    except gdb.error:
        raise SkeinError(
            "skein: no debug information for %s: skein must be built with -g (e.g. "
            "-Dbuildtype=debugoptimized, the default)" % name
        )


class _Fiber:
    """One fiber record, read in one go."""

    __slots__ = (
        "addr", "runtime", "worker", "scheduler", "id", "name", "state", "reason", "detail", "since",
        "deadline", "parent", "site", "stack_lo", "stack_size", "cancel", "shielded", "hooked",
        "resume_at", "thread",
    )


class _Reader:
    """Reads skein's records from the selected inferior. Made afresh by every command: a live
    process changes between commands."""

    def __init__(self):
        if gdb.selected_thread() is None:
            raise SkeinError("skein: no process or core file to look at (run the program, attach, or load a core)")
        self.inf = gdb.selected_inferior()
        try:
            # Through its minimal symbol and a cast: gdb finds a function-local static's own debug
            # information only once its compilation unit has been read, which nothing else forces.
            # Types are looked up from Python: gdb 13's expression parser may not resolve a
            # namespace-qualified type before its unit has been read ("No type detail within
            # namespace skein").
            addr = int(gdb.parse_and_eval("(long)&'skein::detail::runtime_registry()::registry'"))
            reg_t = gdb.lookup_type("skein::detail::RuntimeRegistry")
            reg = gdb.Value(addr).cast(reg_t.pointer().pointer()).dereference()
        except gdb.error:
            raise SkeinError(
                "skein: no skein runtime in this program: the symbol "
                "skein::detail::runtime_registry()::registry is missing (not linked with skein, or "
                "skein built without debug information: it needs -g, e.g. -Dbuildtype=debugoptimized)"
            )
        if int(reg) == 0:
            raise SkeinError("skein: no skein runtime has been created in this process yet")
        self.ptr = gdb.lookup_type("void").pointer().sizeof
        self.fiber_t = _type("skein::detail::Fiber")
        self.sched_t = _type("skein::detail::Scheduler")
        self.exec_t = _type("skein::detail::ExecContext")
        ft = self.fiber_t
        self.off = {
            "sp": _offset(ft, "sp"),
            "stack_lo": _offset(ft, "stack.lo"),
            "stack_size": _offset(ft, "stack.size"),
            "kind": _offset(ft, "kind"),
            "state": _offset(ft, "state"),
            "cancel": _offset(ft, "cancel_requested"),
            "shielded": _offset(ft, "shielded"),
            "reason": _offset(ft, "wait_reason"),
            "resume_at": _offset(ft, "resume_at"),
            "timer_slot": _offset(ft, "timer_slot"),
            "deadline": _offset(ft, "deadline"),
            "detail": _offset(ft, "wait_detail"),
            "since": _offset(ft, "wait_since"),
            "next_live": _offset(ft, "next_live"),
            "name_p": _offset(ft, "name._M_dataplus._M_p"),
            "name_n": _offset(ft, "name._M_string_length"),
            "id": _offset(ft, "id"),
            "parent": _offset(ft, "parent_id"),
            "site": _offset(ft, "spawn_site"),
            "hooked": _offset(ft, "hooked_call"),
        }
        self.fiber_size = ft.sizeof
        site_t = _member_type(ft, "spawn_site")
        site_fields = _field_offsets(site_t)
        if "file_" in site_fields:  # skein::SourceLocation
            self.site_off = (site_fields["file_"], site_fields["function_"], site_fields["line_"])
            self.site_indirect = False
        else:  # std::source_location: a pointer to {_M_file_name, _M_function_name, _M_line, ...}
            self.site_off = (0, self.ptr, 2 * self.ptr)
            self.site_indirect = True
        self.reasons = {}
        for f in _type("skein::debug::WaitReason").fields():
            name = f.name.split("::")[-1]
            self.reasons[f.enumval] = _REASON_TEXT.get(name, name)
        self.strings = {}
        self.registry = reg
        self._fibers = None
        self._threads = None

    # Raw memory.
    def mem(self, addr, n):
        try:
            return self.inf.read_memory(addr, n).tobytes()
        except gdb.MemoryError:
            raise SkeinError("skein: cannot read %d bytes at %#x (memory missing from the core file?)" % (n, addr))

    def word(self, addr):
        return struct.unpack("<Q", self.mem(addr, 8))[0]

    def cstring(self, addr, limit=4096):
        if addr == 0:
            return ""
        if addr in self.strings:
            return self.strings[addr]
        out = b""
        while len(out) < limit:
            try:
                chunk = self.inf.read_memory(addr + len(out), 64).tobytes()
            except gdb.MemoryError:
                chunk = b""
                for i in range(64):  # up to the end of the readable memory
                    try:
                        chunk += self.inf.read_memory(addr + len(out) + i, 1).tobytes()
                    except gdb.MemoryError:
                        break
                if not chunk:
                    break
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                break
            out += chunk
        s = out.decode("utf-8", "replace")
        self.strings[addr] = s
        return s

    # The runtimes and their workers.
    def runtimes(self):
        """[(serial, [scheduler address, ...]), ...] in creation order."""
        reg = self.registry.dereference()
        out = []
        for core in self._vector(reg["runtimes"]):
            c = core.dereference()
            workers = [int(w) for w in self._vector(c["workers_"])]
            out.append((int(c["serial_"]), workers))
        return out

    def _vector(self, v):
        start = v["_M_impl"]["_M_start"]
        finish = v["_M_impl"]["_M_finish"]
        n = int(finish - start)
        return [start[i] for i in range(n)]

    def scheduler(self, addr):
        return gdb.Value(addr).cast(self.sched_t.pointer()).dereference()

    def fibers(self):
        if self._fibers is not None:
            return self._fibers
        o = self.off
        out = []
        threads = self.threads()
        for serial, workers in self.runtimes():
            for index, saddr in enumerate(workers):
                s = self.scheduler(saddr)
                running = int(s["running_"])
                addr = int(s["live_"])
                seen = 0
                limit = int(s["live_count_"]) + 1
                while addr and seen <= limit:
                    seen += 1
                    raw = self.mem(addr, self.fiber_size)
                    if raw[:8] == b"\0" * 8:
                        # A polymorphic record with no vtable pointer: the memory is not there.
                        raise SkeinError(
                            "skein: the fiber record at %#x (worker %d) reads as zeros: the core file "
                            "lacks the fibers' stacks. gdb's generate-core-file (gcore) stops copying a "
                            "mapping at its first unreadable page, which stacks guarded with "
                            "MADV_GUARD_INSTALL (Linux 6.13+) have; use a core the kernel wrote, or "
                            "skein::set_guard_mode(skein::GuardMode::mprotect) in the program "
                            "(docs/observability.md, \"gdb\")" % (addr, index)
                        )
                    f = _Fiber()
                    f.addr = addr
                    f.runtime = serial
                    f.worker = index
                    f.scheduler = saddr
                    f.id = struct.unpack_from("<Q", raw, o["id"])[0]
                    n = struct.unpack_from("<Q", raw, o["name_n"])[0]
                    p = struct.unpack_from("<Q", raw, o["name_p"])[0]
                    if n and addr <= p and p + n <= addr + self.fiber_size:  # a short name, inside the record
                        f.name = raw[p - addr : p - addr + n].decode("utf-8", "replace")
                    else:
                        f.name = self.mem(p, min(n, 256)).decode("utf-8", "replace") if n else ""
                    f.state = raw[o["state"]]
                    f.reason = raw[o["reason"]]
                    f.detail = struct.unpack_from("<Q", raw, o["detail"])[0]
                    f.since = struct.unpack_from("<q", raw, o["since"])[0]
                    slot = struct.unpack_from("<Q", raw, o["timer_slot"])[0]
                    f.deadline = (
                        struct.unpack_from("<q", raw, o["deadline"])[0] if slot != 0xFFFFFFFFFFFFFFFF else None
                    )
                    f.parent = struct.unpack_from("<Q", raw, o["parent"])[0]
                    f.site = self._site(raw, o["site"])
                    f.stack_lo = struct.unpack_from("<Q", raw, o["stack_lo"])[0]
                    f.stack_size = struct.unpack_from("<Q", raw, o["stack_size"])[0]
                    f.cancel = raw[o["cancel"]] != 0
                    f.shielded = raw[o["shielded"]] != 0
                    f.hooked = self.cstring(struct.unpack_from("<Q", raw, o["hooked"])[0])
                    f.resume_at = struct.unpack_from("<Q", raw, o["resume_at"])[0]
                    f.thread = threads.get(saddr) if addr == running else None
                    if addr == running and f.thread is None:
                        f.thread = self._thread_on_stack(f.stack_lo, f.stack_size)
                    out.append(f)
                    addr = struct.unpack_from("<Q", raw, o["next_live"])[0]
        out.sort(key=lambda f: (f.runtime, f.id))
        self._fibers = out
        return out

    def _site(self, raw, off):
        base = raw
        pos = off
        if self.site_indirect:
            p = struct.unpack_from("<Q", raw, off)[0]
            if p == 0:
                return ("", "", 0)
            base = self.mem(p, 3 * self.ptr)
            pos = 0
        fo, fn, ln = self.site_off
        file_p = struct.unpack_from("<Q", base, pos + fo)[0]
        func_p = struct.unpack_from("<Q", base, pos + fn)[0]
        line = struct.unpack_from("<I", base, pos + ln)[0]
        return (self.cstring(file_p), self.cstring(func_p), line)

    def threads(self):
        """{scheduler address: gdb thread} for every thread with a skein scheduler bound to it
        (skein::detail::tl_scheduler, read per thread)."""
        if self._threads is not None:
            return self._threads
        self._threads = {}
        self.thread_sp = {}
        with _KeepSelection():
            for t in self.inf.threads():
                try:
                    t.switch()
                    frame = gdb.newest_frame()
                    self.thread_sp[t.num] = (t, int(frame.read_register(_SP[_arch()])))
                    s = int(gdb.parse_and_eval("'skein::detail::tl_scheduler'"))
                except gdb.error:
                    continue
                if s:
                    self._threads[s] = t
        return self._threads

    def _thread_on_stack(self, lo, size):
        for t, sp in self.thread_sp.values():
            if lo <= sp < lo + size:
                return t
        return None

    def clock(self):
        """(now in ns of CLOCK_MONOTONIC_COARSE, now in ns of CLOCK_MONOTONIC, exact): the host's
        clocks when the process runs on this machine; else the workers' last reading of the coarse
        clock (0 where marked stale), a lower bound of the latest time the process reached."""
        conn = getattr(self.inf, "connection", None)
        if conn is not None and conn.type == "native" and self.inf.pid:
            return (
                time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6)),  # Linux: 6
                time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                True,
            )
        latest = 0
        for _, workers in self.runtimes():
            for saddr in workers:
                latest = max(latest, int(self.scheduler(saddr)["coarse_now_"]))
        return (latest, latest, False)

    def find(self, spec):
        """The fiber named by "13", "#13", "2:13" (fiber 13 of runtime 2) or its name, if unique."""
        m = re.fullmatch(r"(?:(\d+):)?#?(\d+)", spec.strip())
        if not m:
            named = [f for f in self.fibers() if f.name == spec.strip()]
            if len(named) == 1:
                return named[0]
            if named:
                raise SkeinError(
                    "skein: %d fibers are named %r: say which by id (%s)"
                    % (len(named), spec, ", ".join("%d:#%d" % (f.runtime, f.id) for f in named[:10]))
                )
            raise SkeinError(
                "skein: %r is neither a fiber id (13, #13, or 2:13 for fiber 13 of runtime 2) nor a fiber's name"
                % spec
            )
        runtime = int(m.group(1)) if m.group(1) else None
        fid = int(m.group(2))
        found = [f for f in self.fibers() if f.id == fid and (runtime is None or f.runtime == runtime)]
        if not found:
            where = " in runtime %d" % runtime if runtime is not None else ""
            raise SkeinError(
                "skein: no fiber #%d%s among the %d live fibers (`skein fibers` lists them; a fiber that "
                "has finished is gone)" % (fid, where, len(self.fibers()))
            )
        if len(found) > 1:
            raise SkeinError(
                "skein: fiber #%d exists in runtimes %s: say which, e.g. `skein bt %d:%d`"
                % (fid, ", ".join(str(f.runtime) for f in found), found[0].runtime, fid)
            )
        return found[0]

    # Contexts.
    def context_chain(self, f):
        """The suspended contexts a parked fiber's stack is made of, innermost first: its
        resume_at, and while that is a coroutine's, the context that resumed the coroutine."""
        exec_kind = _offset(self.exec_t, "kind")
        sp_off = _offset(self.exec_t, "sp")
        co_t = _type("skein::detail::CoroutineCore")
        # A context pointer points at the ExecContext inside the coroutine, which begins after the
        # vtable pointer: the caller field is relative to the coroutine.
        caller_off = _offset(co_t, "caller") - (_offset(co_t, "sp") - sp_off)
        chain = []
        c = f.resume_at
        for _ in range(64):
            if not c:
                break
            kind = self.mem(c + exec_kind, 1)[0]
            chain.append((c, self.word(c + sp_off), kind))
            if kind != 2:  # ContextKind::coroutine
                break
            c = self.word(c + caller_off)
        return chain

    def saved_registers(self, handle):
        """{register: value} a context suspended with saved stack pointer `handle` resumes with."""
        lay = _layout()
        raw = self.mem(handle, lay["size"])
        regs = {name: struct.unpack_from("<Q", raw, off)[0] for name, off in lay["regs"].items()}
        arch = _arch()
        regs[_PC[arch]] = struct.unpack_from("<Q", raw, lay["pc"])[0]
        regs[_SP[arch]] = handle + lay["size"]
        return regs


class _KeepSelection:
    """Restores the selected thread and frame, also on error."""

    def __enter__(self):
        self.thread = gdb.selected_thread()
        try:
            self.level = gdb.selected_frame().level()
        except gdb.error:
            self.level = None
        return self

    def __exit__(self, *exc):
        if self.thread is not None and self.thread.is_valid():
            self.thread.switch()
            if self.level is not None:
                try:
                    f = gdb.newest_frame()
                    for _ in range(self.level):
                        f = f.older() or f
                    f.select()
                except gdb.error:
                    pass
        return False


# ---------------------------------------------------------------------------------------------
# Showing a suspended context: the unwinder.


class _FrameId:
    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


class _FiberUnwinder(gdb.unwinder.Unwinder):
    """Makes the caller of the selected thread's innermost frame a suspended context: the frame it
    claims is the thread's own frame 0 (recognised by its stack pointer and pc), whose caller's
    registers are those the context's switch saved. gdb's own unwinders take it from there."""

    def __init__(self):
        super().__init__("skein fibers")
        self.enabled = False
        self.regs = None
        self.at = None  # (sp, pc) of the thread's frame 0

    def show(self, regs):
        """Shows the context whose saved registers are `regs` from now on (None: none)."""
        if regs is None:
            self.enabled = False
            self.regs = None
            self.at = None
        else:
            arch = _arch()
            self.enabled = False
            gdb.invalidate_cached_frames()
            frame = gdb.newest_frame()
            self.at = (int(frame.read_register(_SP[arch])), int(frame.read_register(_PC[arch])))
            self.regs = regs
            self.enabled = True
        gdb.invalidate_cached_frames()

    def __call__(self, pending):
        if self.regs is None:
            return None
        arch = _arch()
        sp = pending.read_register(_SP[arch])
        pc = pending.read_register(_PC[arch])
        if (int(sp), int(pc)) != self.at:
            return None
        info = pending.create_unwind_info(_FrameId(sp, pc))
        for name, value in self.regs.items():
            t = pending.read_register(name).type
            info.add_saved_register(name, gdb.Value(value).cast(t))
        return info


_unwinder = _FiberUnwinder()
gdb.unwinder.register_unwinder(None, _unwinder, replace=True)


def _on_resume(event):
    # The process runs again: the fiber shown is gone from where it was.
    _unwinder.enabled = False
    _unwinder.regs = None
    _unwinder.at = None


gdb.events.cont.connect(_on_resume)


class _EntryFilter:
    """Ends a fiber's backtrace at its entry trampoline. Boost.Context's (in make_fcontext) has no
    unwind information, so gdb would go on guessing frames past it; skein's own ends the stack
    with `.cfi_undefined rip`."""

    def __init__(self):
        self.name = "skein-fiber-entry"
        self.priority = 100
        self.enabled = True
        gdb.frame_filters[self.name] = self

    def filter(self, frames):
        for decorator in frames:
            yield decorator
            if _unwinder.regs is not None:
                try:
                    name = decorator.inferior_frame().name()
                except gdb.error:
                    name = None
                if name in _ENTRY_SYMBOLS:
                    return


_EntryFilter()


def _entry_symbol(pc):
    """The name of the symbol at `pc`, if it is a fresh context's entry trampoline."""
    try:
        text = gdb.execute("info symbol %#x" % pc, to_string=True)
    except gdb.error:
        return None
    name = text.split(" ")[0]
    return name if name in _ENTRY_SYMBOLS else None


def _renumber(text, first):
    """gdb's bt output with frame #0 (the thread's own) removed and the rest numbered from `first`."""
    out = []
    keep = False
    number = first
    for line in text.splitlines():
        m = re.match(r"#(\d+)(\s+)(.*)", line)
        if m:
            keep = m.group(1) != "0"
            if keep:
                label = "#%d" % number
                line = label + " " * max(1, len(m.group(1)) + len(m.group(2)) + 1 - len(label)) + m.group(3)
                number += 1
        if keep:
            out.append(line)
    return "\n".join(out), number


def _backtrace(reader, f, bt_args):
    """The text of fiber `f`'s backtrace (a parked or ready fiber)."""
    chain = reader.context_chain(f)
    if not chain:
        return "  (no saved context)\n"
    out = []
    number = 0
    for i, (ctx, handle, kind) in enumerate(chain):
        regs = reader.saved_registers(handle)
        pc = regs[_PC[_arch()]]
        if i > 0:
            out.append("  -- resumed the coroutine above: --")
        entry = _entry_symbol(pc)
        if entry:
            out.append("  (not started yet: its first switch enters %s)" % entry)
            continue
        try:
            _unwinder.show(regs)
            text = gdb.execute("bt " + bt_args, to_string=True)
        finally:
            _unwinder.show(None)
        text, number = _renumber(text, number)
        out.append(text)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Formatting.


def _duration(ns):
    if ns < 0:
        ns = 0
    if ns >= 1000e9:
        return "%.0fs" % (ns / 1e9)
    if ns >= 1e9:
        return "%.3gs" % (ns / 1e9)
    if ns >= 1e6:
        return "%.3gms" % (ns / 1e6)
    if ns >= 1e3:
        return "%.3gus" % (ns / 1e3)
    return "%dns" % ns


def _waiting_text(reader, f):
    """ "channel recv on 0x7ffe...", "fd read on fd 7 (in recv)", "sleep"."""
    reason = reader.reasons.get(f.reason, "reason %d" % f.reason)
    d = f.detail
    if reason in ("fd read", "fd write", "accept", "connect"):
        detail = "on fd %d" % d
    elif reason == "join":
        detail = "on #%d" % d
    elif reason == "select":
        detail = "on %d channel(s)" % d
    elif reason == "hooked call":
        detail = reader.cstring(d)
    elif reason in ("sleep", "run_blocking", "other", ""):
        detail = ""
    else:
        detail = "on %#x" % d
    text = reason + (" " + detail if detail else "")
    if f.hooked:
        text += " (in %s)" % f.hooked
    return text


def _site_text(site):
    file, func, line = site
    if not file:
        return "(unknown)"
    return "%s:%d" % (file, line)


def _fiber_lines(reader):
    fibers = reader.fibers()
    coarse, mono, exact = reader.clock()
    if not exact:
        # A worker's reading may be marked stale (0); the latest park started no earlier either.
        coarse = max([coarse] + [f.since for f in fibers if f.state == 2 and f.since])
        mono = coarse  # the same lower bound, a coarse tick apart at most: deadlines are "~"
    many = len({f.runtime for f in fibers}) > 1
    rows = []
    for f in fibers:
        state = _STATES.get(f.state, "state %d" % f.state)
        what = ""
        since = ""
        if f.state == 2:
            what = _waiting_text(reader, f)
            if f.since and exact:
                since = _duration(coarse - f.since)
            elif f.since and coarse > f.since:
                since = ">=" + _duration(coarse - f.since)
            elif f.since:
                since = "?"
            if f.deadline is not None and (exact or mono):
                what += ", deadline in %s%s" % ("" if exact else "~", _duration(f.deadline - mono))
            elif f.deadline is not None:
                what += ", deadline in ?"  # no clock reading anywhere in the core
        elif f.state == 1:
            what = "on thread %d" % f.thread.num if f.thread is not None else ""
        flags = []
        if f.cancel:
            flags.append("cancel requested")
        if f.shielded:
            flags.append("shielded")
        if flags:
            what += (" " if what else "") + "[" + ", ".join(flags) + "]"
        rows.append(
            (
                ("%d:#%d" % (f.runtime, f.id)) if many else "#%d" % f.id,
                "%d" % f.worker,
                state,
                what,
                since,
                '"%s"' % f.name if f.name else "",
                "#%d" % f.parent,
                _site_text(f.site) + (" in " + f.site[1] if f.site[1] else ""),
            )
        )
    header = ("id", "worker", "state", "waiting on", "for", "name", "parent", "spawned at")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header] + rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(len(r) - 1)) + "  " + r[-1])
    return fibers, [ln.rstrip() for ln in lines], exact


# ---------------------------------------------------------------------------------------------
# Commands.


class _SkeinPrefix(gdb.Command):
    """skein's fibers: `skein fibers`, `skein bt ID`, `skein fiber ID` / `skein fiber off`."""

    def __init__(self):
        super().__init__("skein", gdb.COMMAND_STACK, gdb.COMPLETE_COMMAND, prefix=True)


class _FibersCommand(gdb.Command):
    """List every fiber of every skein runtime, with what it waits on and since when.
Columns: id, worker, state, what it waits on, for how long, name, parent and spawn site.
Usage: skein fibers [TEXT]   (only the fibers whose line contains TEXT)
Waiting times of a live local process are the host's clock minus the park's start; in a core file
or a remote process (gdbserver, qemu-user's stub) they are measured to the workers' last clock
reading (shown as >=, a lower bound)."""

    def __init__(self):
        super().__init__("skein fibers", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        reader = _Reader()
        runtimes = reader.runtimes()
        if not runtimes:
            raise SkeinError("skein: no skein runtime is alive in this process")
        fibers, lines, exact = _fiber_lines(reader)
        counts = {}
        for f in fibers:
            counts[_STATES.get(f.state, "?")] = counts.get(_STATES.get(f.state, "?"), 0) + 1
        workers = sum(len(w) for _, w in runtimes)
        threads = reader.threads()
        where = []
        for serial, ws in runtimes:
            for i, s in enumerate(ws):
                t = threads.get(s)
                if t is not None:
                    where.append("%sworker %d: thread %d" % ("runtime %d " % serial if len(runtimes) > 1 else "", i, t.num))
        gdb.write(
            "%d fibers in %d runtime(s), %d worker(s): %s%s\n"
            % (
                len(fibers),
                len(runtimes),
                workers,
                ", ".join("%d %s" % (counts.get(s, 0), s) for s in ("ready", "running", "parked")),
                " (" + ", ".join(where) + ")" if where else "",
            )
        )
        text = arg.strip()
        gdb.write(lines[0] + "\n")
        for line in lines[1:]:
            if not text or text in line:
                gdb.write(line + "\n")
        if not exact and any(f.state == 2 for f in fibers):
            gdb.write("(not a live local process: waiting times are up to the workers' last clock reading, lower bounds)\n")


class _BtCommand(gdb.Command):
    """Backtrace of a parked or ready fiber, unwound from the registers its last switch saved.
Usage: skein bt ID [BT-OPTIONS]   (ID: 13, #13, 2:13 for fiber 13 of runtime 2, or a fiber's
                                  name if no other fiber has it; BT-OPTIONS go to gdb's bt:
                                  full, -frame-arguments none, 5, ...)
       skein bt all [BT-OPTIONS]  every fiber that is not running
A running fiber's stack is its thread's: the error names the thread (`thread N`, then `bt`)."""

    def __init__(self):
        super().__init__("skein bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        args = arg.split(None, 1)
        if not args:
            raise SkeinError("skein: usage: skein bt ID [bt options], or skein bt all")
        reader = _Reader()
        bt_args = args[1] if len(args) > 1 else ""
        if args[0] == "all":
            for f in reader.fibers():
                gdb.write(_title(reader, f) + "\n")
                if f.state == 1:
                    gdb.write("  (running: %s)\n\n" % _running_hint(f))
                    continue
                gdb.write(_backtrace(reader, f, bt_args) + "\n")
            return
        f = reader.find(args[0])
        if f.state == 1:
            raise SkeinError("skein: fiber #%d is running: %s" % (f.id, _running_hint(f)))
        gdb.write(_title(reader, f) + "\n")
        gdb.write(_backtrace(reader, f, bt_args))


def _running_hint(f):
    if f.thread is not None:
        return "its stack is thread %d's (worker %d): `thread %d` then `bt`" % (f.thread.num, f.worker, f.thread.num)
    return "its stack is that of worker %d's thread: `info threads`, `thread N` then `bt`" % f.worker


def _title(reader, f):
    state = _STATES.get(f.state, "?")
    if f.state == 2:
        state += ": " + _waiting_text(reader, f)
    name = ' "%s"' % f.name if f.name else ""
    return "fiber #%d%s %s (runtime %d worker %d, spawned at %s)" % (
        f.id, name, state, f.runtime, f.worker, _site_text(f.site))


class _FiberCommand(gdb.Command):
    """Show a parked fiber's frames in place of the selected thread's, until `skein fiber off`.
bt, frame N, up, down, info locals and print then work on the fiber's frames. Frame #0 stays the
thread's own innermost frame; the fiber's frames follow from #1 (selected). A fiber parked inside
a coroutine shows the coroutine's stack (`skein bt` shows the whole chain).
Usage: skein fiber ID | skein fiber off"""

    def __init__(self):
        super().__init__("skein fiber", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        arg = arg.strip()
        if arg in ("off", ""):
            _unwinder.show(None)
            if arg == "":
                raise SkeinError("skein: usage: skein fiber ID, or skein fiber off")
            gdb.write("skein: back to the thread's own stack\n")
            return
        _unwinder.show(None)
        reader = _Reader()
        f = reader.find(arg)
        if f.state == 1:
            raise SkeinError("skein: fiber #%d is running: %s" % (f.id, _running_hint(f)))
        chain = reader.context_chain(f)
        regs = reader.saved_registers(chain[0][1])
        entry = _entry_symbol(regs[_PC[_arch()]])
        if entry:
            raise SkeinError("skein: fiber #%d has not started yet: it has no frames" % f.id)
        _unwinder.show(regs)
        gdb.write(_title(reader, f) + "\n")
        try:
            gdb.execute("frame 1")
        except gdb.error:
            _unwinder.show(None)
            raise


_SkeinPrefix()
_FibersCommand()
_BtCommand()
_FiberCommand()
