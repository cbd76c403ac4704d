/* The x86-64 System V context switch, ELF object format, GNU assembler.
 *
 *   skein_jump_fcontext(to, data) -> {from, data}   suspend here, resume `to`
 *   skein_make_fcontext(top, size, fn) -> ctx       a fresh context that calls fn({from, data})
 *
 * The interface is Boost.Context's fcontext (asm/context.hpp): a context is the stack pointer of a
 * suspended stack, and one pointer travels across every switch.
 *
 * Saved state is exactly what the ABI makes callee-saved: RBX, RBP, R12-R15, RSP, the MXCSR control
 * bits and the x87 control word. The frame (frame_x86_64_sysv.h):
 *
 *   +------+------+-----+-----+-----+-----+-----+-----+-----+
 *   | 0x00 | 0x04 |0x08 |0x10 |0x18 |0x20 |0x28 |0x30 |0x38 |
 *   |MXCSR |x87 CW| R12 | R13 | R14 | R15 | RBX | RBP | RIP |
 *   +------+------+-----+-----+-----+-----+-----+-----+-----+
 *
 * Two choices make the switch cheap:
 * - The FP control words are always saved; how they are restored depends on the CPU vendor,
 *   chosen once at start-up (skein_switch_fp_mode, asm/fp_mode_x86_64.cpp):
 *   - compare (Intel, and the default): ldmxcsr and fldcw are slow there, and almost every switch
 *     goes between contexts with the same FP control state, so the words are restored only when
 *     the incoming context's differ from the ones just saved;
 *   - load (AMD, Hygon): there ldmxcsr costs about a cycle but a load of the word stmxcsr just
 *     stored is not forwarded from the store, so the compare stalls every switch (figures in
 *     docs/architecture.md). MXCSR is loaded unconditionally; the x87 control word (whose fnstcw
 *     store forwards normally) is still compared.
 * - The switch leaves through `jmp` to the popped return address, not `ret`: `ret` after a stack
 *   change always misses the return-stack predictor; an indirect jump is predicted per site.
 *   (This is also why the objects carry no CET shadow-stack property.)
 */
#include "frame_x86_64_sysv.h"

        .file   "switch_x86_64_sysv_elf.S"
        .hidden skein_switch_fp_mode              /* asm/fp_mode_x86_64.cpp: 0 compare, 1 load */
        .text

/* The end of a switch: restore the incoming context's registers and resume it. Remembers the CFI
 * state at its start; the code after it must begin with .cfi_restore_state. */
        .macro  LEAVE_TO_INCOMING
        movq    SKEIN_FRAME_R12(%rsp), %r12       /* restore R12 */
        movq    SKEIN_FRAME_R13(%rsp), %r13       /* restore R13 */
        movq    SKEIN_FRAME_R14(%rsp), %r14       /* restore R14 */
        movq    SKEIN_FRAME_R15(%rsp), %r15       /* restore R15 */
        movq    SKEIN_FRAME_RBX(%rsp), %rbx       /* restore RBX */
        movq    SKEIN_FRAME_RBP(%rsp), %rbp       /* restore RBP */
        movq    SKEIN_FRAME_RIP(%rsp), %r8        /* where the incoming context resumes */
        .cfi_remember_state
        leaq    SKEIN_FRAME_SIZE(%rsp), %rsp      /* pop the frame and the return address */
        .cfi_def_cfa_offset 0                     /* for unwinders sampling the last three */
        .cfi_register rip, r8                     /* instructions: the return address is in R8 */

        movq    %rsi, %rdx                        /* return {from, data} in RAX:RDX ... */
        movq    %rax, %rdi                        /* ... and as the argument of a fresh entry */
        jmp     *%r8                              /* resume */
        .endm

/* skein_jump_fcontext(void *to: rdi, void *data: rsi) -> {rax: from, rdx: data} */
        .globl  skein_jump_fcontext
        .hidden skein_jump_fcontext
        .type   skein_jump_fcontext, @function
        .p2align 4
skein_jump_fcontext:
        .cfi_startproc
        endbr64
        leaq    -SKEIN_FRAME_RIP(%rsp), %rsp      /* frame below our return address */
        .cfi_adjust_cfa_offset SKEIN_FRAME_RIP
        stmxcsr SKEIN_FRAME_MXCSR(%rsp)           /* save MXCSR */
        fnstcw  SKEIN_FRAME_X87CW(%rsp)           /* save x87 control word */
        movq    %r12, SKEIN_FRAME_R12(%rsp)       /* save R12 */
        movq    %r13, SKEIN_FRAME_R13(%rsp)       /* save R13 */
        movq    %r14, SKEIN_FRAME_R14(%rsp)       /* save R14 */
        movq    %r15, SKEIN_FRAME_R15(%rsp)       /* save R15 */
        movq    %rbx, SKEIN_FRAME_RBX(%rsp)       /* save RBX */
        movq    %rbp, SKEIN_FRAME_RBP(%rsp)       /* save RBP */

        movq    %rsp, %rax                        /* RAX: the context we leave */
        movq    %rdi, %rsp                        /* switch stacks */

        cmpb    $0, skein_switch_fp_mode(%rip)    /* constant after start-up: always predicted */
        jne     .Lload_mxcsr

        /* Compare with loads of the same width as the stores just made: one 8-byte load over
         * the 4-byte and 2-byte stores cannot be store-forwarded and stalls every switch. */
        movl    SKEIN_FRAME_MXCSR(%rsp), %ecx     /* incoming MXCSR */
        xorl    SKEIN_FRAME_MXCSR(%rax), %ecx     /* differences from the one we just saved */
        andl    $~0x3f, %ecx                      /* ignore exception flags (bits 0-5) */
        movzwl  SKEIN_FRAME_X87CW(%rsp), %r9d     /* incoming x87 control word */
        xorw    SKEIN_FRAME_X87CW(%rax), %r9w     /* differences from the one we just saved */
        orl     %r9d, %ecx
        jnz     .Lrestore_fp                      /* control state differs: load it */
.Lfp_restored:
        LEAVE_TO_INCOMING

        .cfi_restore_state
.Lrestore_fp:
        ldmxcsr SKEIN_FRAME_MXCSR(%rsp)           /* restore MXCSR */
        fldcw   SKEIN_FRAME_X87CW(%rsp)           /* restore x87 control word */
        jmp     .Lfp_restored

        /* The load mode: its own copy of the exit, so that it costs no extra taken branch. */
.Lload_mxcsr:
        ldmxcsr SKEIN_FRAME_MXCSR(%rsp)           /* restore MXCSR */
        movzwl  SKEIN_FRAME_X87CW(%rsp), %ecx     /* incoming x87 control word */
        cmpw    SKEIN_FRAME_X87CW(%rax), %cx      /* the same as the one we just saved? */
        jne     .Lrestore_x87
.Lx87_restored:
        LEAVE_TO_INCOMING

        .cfi_restore_state
.Lrestore_x87:
        fldcw   SKEIN_FRAME_X87CW(%rsp)           /* restore x87 control word */
        jmp     .Lx87_restored
        .cfi_endproc
        .size   skein_jump_fcontext, .-skein_jump_fcontext

/* skein_make_fcontext(void *top: rdi, size_t size: rsi, void (*fn)(transfer): rdx) -> rax
 * Builds a frame at the 16-byte aligned top of the stack whose first resumption enters
 * skein_context_entry with the entry function in R12. `size` is unused on x86-64: the stack grows
 * down from `top` and its end is the guard page. The fresh context starts with the creator's FP
 * control state. */
        .globl  skein_make_fcontext
        .hidden skein_make_fcontext
        .type   skein_make_fcontext, @function
        .p2align 4
skein_make_fcontext:
        .cfi_startproc
        endbr64
        movq    %rdi, %rax
        andq    $-16, %rax                        /* align the stack top */
        leaq    -SKEIN_FRAME_SIZE(%rax), %rax     /* room for one frame */
        stmxcsr SKEIN_FRAME_MXCSR(%rax)           /* inherit MXCSR */
        fnstcw  SKEIN_FRAME_X87CW(%rax)           /* inherit x87 control word */
        movq    %rdx, SKEIN_FRAME_R12(%rax)       /* entry function, for the trampoline */
        movq    $0, SKEIN_FRAME_RBP(%rax)         /* no caller frame: frame-pointer walks stop */
        leaq    skein_context_entry(%rip), %rcx
        movq    %rcx, SKEIN_FRAME_RIP(%rax)       /* first resumption lands in the trampoline */
        ret
        .cfi_endproc
        .size   skein_make_fcontext, .-skein_make_fcontext

/* First code a fresh context runs. RDI:RSI hold {from, data}; R12 the entry function; RSP is
 * 16-byte aligned, so the call below gives the entry function the alignment the ABI promises.
 * The entry function never returns. */
        .type   skein_context_entry, @function
        .p2align 4
skein_context_entry:
        .cfi_startproc
        .cfi_undefined rip                        /* unwinders stop here: no caller */
        endbr64                                   /* reached by an indirect jump */
        call    *%r12                             /* fn({from, data}) */
        ud2                                       /* fn returned: a bug in the caller */
        .cfi_endproc
        .size   skein_context_entry, .-skein_context_entry

        .section .note.GNU-stack,"",%progbits
