/* Switch probes for AArch64 AAPCS64 (see switch_probe.hpp).
 *
 * skein_probe_callee_saved's result, one bit per register that did not survive:
 *   bits 0-10   X19, X20, ..., X28, X29 (bit n: X(19 + n))
 *   bits 11-18  D8, D9, ..., D15        (bit 11 + n: D(8 + n))
 *   bit 31      FPCR
 * X30 (LR) has no bit: if it did not survive, the probe cannot return at all.
 */

/* BTI_C pads the entries (reached by the switch's `blr x19`) and the probe (called through a
 * pointer); the property note keeps BTI on in -mbranch-protection builds. */
#include "prelude_aarch64_elf.h"

/* FPCR values: RMode is bits 22-23, FZ bit 24, DN bit 25. */
#define PROBE_FPCR 0x03800000   /* round toward minus infinity, flush-to-zero, default NaN */
#define CLOBBER_FPCR 0x00c00000 /* round toward zero */

        .text

/* Sets bit \bit of w0 when \reg (an X register other than x9, x10) differs from \value. */
        .macro  check_x reg, value, bit
        ldr     x9, =\value
        cmp     \reg, x9
        cset    w10, ne
        orr     w0, w0, w10, lsl #\bit
        .endm

/* The same for a D register. Uses x11 too. */
        .macro  check_d reg, value, bit
        fmov    x11, \reg
        check_x x11, \value, \bit
        .endm

/* uint32_t skein_probe_callee_saved(void **clobber_ctx: x0, jump_fn: x1)
 * Frame: 0x00 caller's X29, X30; 0x10-0x5f caller's X19-X28; 0x60-0x9f caller's D8-D15;
 *        0xa0 caller's FPCR; 0xa8 clobber_ctx. */
        .globl  skein_probe_callee_saved
        .type   skein_probe_callee_saved, %function
        .p2align 4
skein_probe_callee_saved:
        BTI_C
        stp     x29, x30, [sp, #-0xb0]!
        stp     x19, x20, [sp, #0x10]
        stp     x21, x22, [sp, #0x20]
        stp     x23, x24, [sp, #0x30]
        stp     x25, x26, [sp, #0x40]
        stp     x27, x28, [sp, #0x50]
        stp     d8, d9, [sp, #0x60]
        stp     d10, d11, [sp, #0x70]
        stp     d12, d13, [sp, #0x80]
        stp     d14, d15, [sp, #0x90]
        mrs     x9, fpcr                    /* the caller's FP control, restored at the end */
        stp     x9, x0, [sp, #0xa0]
        mov     x9, #PROBE_FPCR
        msr     fpcr, x9
        ldr     x19, =0x1919191919191919
        ldr     x20, =0x2020202020202020
        ldr     x21, =0x2121212121212121
        ldr     x22, =0x2222222222222222
        ldr     x23, =0x2323232323232323
        ldr     x24, =0x2424242424242424
        ldr     x25, =0x2525252525252525
        ldr     x26, =0x2626262626262626
        ldr     x27, =0x2727272727272727
        ldr     x28, =0x2828282828282828
        ldr     x29, =0x2929292929292929
        ldr     x9, =0xd8d8d8d8d8d8d8d8
        fmov    d8, x9
        ldr     x9, =0xd9d9d9d9d9d9d9d9
        fmov    d9, x9
        ldr     x9, =0xdadadadadadadada
        fmov    d10, x9
        ldr     x9, =0xdbdbdbdbdbdbdbdb
        fmov    d11, x9
        ldr     x9, =0xdcdcdcdcdcdcdcdc
        fmov    d12, x9
        ldr     x9, =0xdddddddddddddddd
        fmov    d13, x9
        ldr     x9, =0xdededededededede
        fmov    d14, x9
        ldr     x9, =0xdfdfdfdfdfdfdfdf
        fmov    d15, x9
        mov     x16, x1                     /* jump(*clobber_ctx, data = jump) */
        ldr     x0, [x0]
        blr     x16
        ldr     x9, [sp, #0xa8]
        str     x0, [x9]                    /* the clobber context's new handle */

        mov     w0, #0
        check_x x19, 0x1919191919191919, 0
        check_x x20, 0x2020202020202020, 1
        check_x x21, 0x2121212121212121, 2
        check_x x22, 0x2222222222222222, 3
        check_x x23, 0x2323232323232323, 4
        check_x x24, 0x2424242424242424, 5
        check_x x25, 0x2525252525252525, 6
        check_x x26, 0x2626262626262626, 7
        check_x x27, 0x2727272727272727, 8
        check_x x28, 0x2828282828282828, 9
        check_x x29, 0x2929292929292929, 10
        check_d d8, 0xd8d8d8d8d8d8d8d8, 11
        check_d d9, 0xd9d9d9d9d9d9d9d9, 12
        check_d d10, 0xdadadadadadadada, 13
        check_d d11, 0xdbdbdbdbdbdbdbdb, 14
        check_d d12, 0xdcdcdcdcdcdcdcdc, 15
        check_d d13, 0xdddddddddddddddd, 16
        check_d d14, 0xdededededededede, 17
        check_d d15, 0xdfdfdfdfdfdfdfdf, 18
        mrs     x12, fpcr                   /* (x9-x11 are the macros' scratch) */
        check_x x12, PROBE_FPCR, 31

        ldr     x9, [sp, #0xa0]
        msr     fpcr, x9
        ldp     d14, d15, [sp, #0x90]
        ldp     d12, d13, [sp, #0x80]
        ldp     d10, d11, [sp, #0x70]
        ldp     d8, d9, [sp, #0x60]
        ldp     x27, x28, [sp, #0x50]
        ldp     x25, x26, [sp, #0x40]
        ldp     x23, x24, [sp, #0x30]
        ldp     x21, x22, [sp, #0x20]
        ldp     x19, x20, [sp, #0x10]
        ldp     x29, x30, [sp], #0xb0
        ret
        .ltorg
        .size   skein_probe_callee_saved, .-skein_probe_callee_saved

/* void skein_probe_clobber_entry({from: x0, jump: x1}) — never returns.
 * Frame: 0x00 jump function, 0x08 padding (SP stays 16-byte aligned). */
        .globl  skein_probe_clobber_entry
        .type   skein_probe_clobber_entry, %function
        .p2align 4
skein_probe_clobber_entry:
        BTI_C
        sub     sp, sp, #16
        str     x1, [sp]
2:      mov     x9, #CLOBBER_FPCR
        msr     fpcr, x9
        ldr     x19, =0x0badbadbadbadbad
        mov     x20, x19
        mov     x21, x19
        mov     x22, x19
        mov     x23, x19
        mov     x24, x19
        mov     x25, x19
        mov     x26, x19
        mov     x27, x19
        mov     x28, x19
        mov     x29, x19
        fmov    d8, x19
        fmov    d9, x19
        fmov    d10, x19
        fmov    d11, x19
        fmov    d12, x19
        fmov    d13, x19
        fmov    d14, x19
        fmov    d15, x19
        ldr     x16, [sp]
        mov     x1, x16                     /* jump(from, data = jump) */
        blr     x16
        str     x1, [sp]                    /* resumed: {x0: from, x1: jump} */
        b       2b
        .ltorg
        .size   skein_probe_clobber_entry, .-skein_probe_clobber_entry

/* void skein_probe_alignment_entry({from: x0, jump: x1}) — never returns. */
        .globl  skein_probe_alignment_entry
        .type   skein_probe_alignment_entry, %function
        .p2align 4
skein_probe_alignment_entry:
        BTI_C
        mov     x16, x1
        mov     x9, sp
        and     x1, x9, #15                 /* SP must be a multiple of 16 at entry */
        blr     x16                         /* jump(from, misalignment) */
        brk     #0x3e8                      /* never resumed */
        .size   skein_probe_alignment_entry, .-skein_probe_alignment_entry

        SKEIN_GNU_PROPERTY_NOTE

        .section .note.GNU-stack,"",%progbits
