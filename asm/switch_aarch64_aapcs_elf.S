/* The AArch64 (AAPCS64) context switch, ELF object format, GNU assembler.
 *
 *   skein_jump_fcontext(to, data) -> {from, data}   suspend here, resume `to`
 *   skein_make_fcontext(top, size, fn) -> ctx       a fresh context that calls fn({from, data})
 *
 * The interface is Boost.Context's fcontext (asm/context.hpp): a context is the stack pointer of a
 * suspended stack, and one pointer travels across every switch. The {from, data} pair comes back in
 * X0:X1, which are also the first two argument registers, so a fresh context's entry function
 * receives it without a move.
 *
 * Saved state is exactly what the ABI makes callee-saved: X19-X28, X29 (FP), X30 (LR), SP, the low
 * 64 bits of V8-V15 (D8-D15), and the FPCR. The frame (frame_aarch64_aapcs.h):
 *
 *   +------+------+------+------+------+------+------+------+------+------+------+------+
 *   | 0x00 | 0x08 | 0x10 | 0x20 | 0x30 | 0x40 | 0x50 | 0x60 | 0x70 | 0x80 | 0x90 | 0xa0 |
 *   | FPCR | pad  | X19  | X21  | X23  | X25  | X27  | X29  |  D8  | D10  | D12  | D14  |
 *   |      |      | X20  | X22  | X24  | X26  | X28  | X30  |  D9  | D11  | D13  | D15  |
 *   +------+------+------+------+------+------+------+------+------+------+------+------+
 *   (each column from 0x10 on is one 16-byte stp/ldp pair: first register low, second high)
 *
 * Choices, the same as the x86-64 file's where the architectures allow:
 * - msr fpcr is slow (it synchronises the FP pipeline), and almost every switch goes between
 *   contexts with the same FP control state. The FPCR is always saved, but written only when the
 *   incoming context's differs from the value just saved. (FPSR holds only cumulative exception
 *   flags and the saturation bit, which AAPCS64 does not preserve across calls: not saved.)
 * - The switch leaves through `ret`, not `br`. The resume address in X30 follows a `bl` in the
 *   suspended context, which is no BTI landing pad; `ret` is the one indirect branch BTI never
 *   checks. The cost: `ret` consults the return-stack predictor, which expects the other
 *   context's caller, so it mispredicts; x86-64's trick of an indirect jump (predicted per site)
 *   would be `br x30` here, and BTI faults that on a guarded page.
 * - The return address is never signed: the caller's `bl` left a plain address in X30 and that is
 *   what is saved and resumed, so the objects can carry the PAC property. They do not claim GCS:
 *   a guarded control stack would need a shadow stack per context.
 */
#include "frame_aarch64_aapcs.h"
#include "prelude_aarch64_elf.h"

        .file   "switch_aarch64_aapcs_elf.S"
        .text

/* skein_jump_fcontext(void *to: x0, void *data: x1) -> {x0: from, x1: data} */
        .globl  skein_jump_fcontext
        .hidden skein_jump_fcontext
        .type   skein_jump_fcontext, %function
        .p2align 4
skein_jump_fcontext:
        .cfi_startproc
        BTI_C                                       /* may be called through a pointer */
        sub     sp, sp, #SKEIN_FRAME_SIZE           /* frame below the caller's SP */
        .cfi_def_cfa_offset SKEIN_FRAME_SIZE
        stp     x19, x20, [sp, #SKEIN_FRAME_X19]    /* save X19, X20 */
        stp     x21, x22, [sp, #SKEIN_FRAME_X21]    /* save X21, X22 */
        stp     x23, x24, [sp, #SKEIN_FRAME_X23]    /* save X23, X24 */
        stp     x25, x26, [sp, #SKEIN_FRAME_X25]    /* save X25, X26 */
        stp     x27, x28, [sp, #SKEIN_FRAME_X27]    /* save X27, X28 */
        stp     x29, x30, [sp, #SKEIN_FRAME_X29]    /* save FP and LR (our return address) */
        .cfi_offset x29, SKEIN_FRAME_X29 - SKEIN_FRAME_SIZE
        .cfi_offset x30, SKEIN_FRAME_X30 - SKEIN_FRAME_SIZE
        stp     d8, d9, [sp, #SKEIN_FRAME_D8]       /* save D8, D9 */
        stp     d10, d11, [sp, #SKEIN_FRAME_D10]    /* save D10, D11 */
        stp     d12, d13, [sp, #SKEIN_FRAME_D12]    /* save D12, D13 */
        stp     d14, d15, [sp, #SKEIN_FRAME_D14]    /* save D14, D15 */
        mrs     x9, fpcr                            /* X9: our FPCR ... */
        str     x9, [sp, #SKEIN_FRAME_FPCR]         /* ... saved */

        mov     x2, sp                              /* X2: the context we leave */
        mov     sp, x0                              /* switch stacks */

        ldr     x10, [sp, #SKEIN_FRAME_FPCR]        /* X10: the incoming context's FPCR */
        cmp     x10, x9                             /* the same as the one in force? */
        b.ne    .Lrestore_fpcr                      /* no: write it */
.Lfpcr_restored:
        ldp     x19, x20, [sp, #SKEIN_FRAME_X19]    /* restore X19, X20 */
        ldp     x21, x22, [sp, #SKEIN_FRAME_X21]    /* restore X21, X22 */
        ldp     x23, x24, [sp, #SKEIN_FRAME_X23]    /* restore X23, X24 */
        ldp     x25, x26, [sp, #SKEIN_FRAME_X25]    /* restore X25, X26 */
        ldp     x27, x28, [sp, #SKEIN_FRAME_X27]    /* restore X27, X28 */
        ldp     x29, x30, [sp, #SKEIN_FRAME_X29]    /* restore FP, and LR: where to resume */
        ldp     d8, d9, [sp, #SKEIN_FRAME_D8]       /* restore D8, D9 */
        ldp     d10, d11, [sp, #SKEIN_FRAME_D10]    /* restore D10, D11 */
        ldp     d12, d13, [sp, #SKEIN_FRAME_D12]    /* restore D12, D13 */
        ldp     d14, d15, [sp, #SKEIN_FRAME_D14]    /* restore D14, D15 */
        .cfi_remember_state
        add     sp, sp, #SKEIN_FRAME_SIZE           /* pop the frame */
        .cfi_def_cfa_offset 0
        .cfi_restore x29
        .cfi_restore x30

        mov     x0, x2                              /* return {from, data} in X0:X1, which is
                                                       also a fresh entry's argument pair */
        ret                                         /* resume at X30 */

.Lrestore_fpcr:
        .cfi_restore_state
        msr     fpcr, x10                           /* restore FPCR */
        b       .Lfpcr_restored
        .cfi_endproc
        .size   skein_jump_fcontext, .-skein_jump_fcontext

/* skein_make_fcontext(void *top: x0, size_t size: x1, void (*fn)(transfer): x2) -> x0
 * Builds a frame at the 16-byte aligned top of the stack whose first resumption enters
 * skein_context_entry with the entry function in X19. `size` is unused: the stack grows down from
 * `top` and its end is the guard page. The fresh context starts with the creator's FPCR. */
        .globl  skein_make_fcontext
        .hidden skein_make_fcontext
        .type   skein_make_fcontext, %function
        .p2align 4
skein_make_fcontext:
        .cfi_startproc
        BTI_C                                       /* may be called through a pointer */
        and     x0, x0, #~15                        /* align the stack top */
        sub     x0, x0, #SKEIN_FRAME_SIZE           /* room for one frame */
        mrs     x9, fpcr                            /* X9: the creator's FPCR ... */
        str     x9, [x0, #SKEIN_FRAME_FPCR]         /* ... inherited */
        str     x2, [x0, #SKEIN_FRAME_X19]          /* entry function, for the trampoline */
        adr     x9, skein_context_entry             /* first resumption lands in the trampoline */
        stp     xzr, x9, [x0, #SKEIN_FRAME_X29]     /* FP = 0: frame-pointer walks stop; LR */
        ret                                         /* X0: the new context's handle */
        .cfi_endproc
        .size   skein_make_fcontext, .-skein_make_fcontext

/* First code a fresh context runs. X0:X1 hold {from, data}; X19 the entry function; SP is the
 * 16-byte aligned stack top, as the ABI requires at every call. The entry function never
 * returns. */
        .type   skein_context_entry, %function
        .p2align 4
skein_context_entry:
        .cfi_startproc
        .cfi_undefined x30                          /* unwinders stop here: no caller */
        BTI_C                                       /* reached by `ret`, which BTI does not check;
                                                       kept valid should that become `br x16` */
        blr     x19                                 /* fn({from, data}) */
        brk     #0x3e8                              /* fn returned: a bug in the caller */
        .cfi_endproc
        .size   skein_context_entry, .-skein_context_entry

        SKEIN_GNU_PROPERTY_NOTE                     /* BTI/PAC-compatible, when asked for */

        .section .note.GNU-stack,"",%progbits
