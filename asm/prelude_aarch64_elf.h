/* Shared by every aarch64 ELF assembly file (the switch and the test probes).
 *
 * BTI_C: landing pad for `bl`/`blr` (and `br x16`/`br x17`). Written as its hint encoding so any
 * assembler takes it; a NOP on cores without BTI.
 *
 * SKEIN_GNU_PROPERTY_NOTE: marks the object BTI- and/or PAC-compatible when the build asks for it
 * (-mbranch-protection). One object without the note turns BTI off for the whole program, so every
 * .S file ends with it. */
#ifndef SKEIN_ASM_PRELUDE_AARCH64_ELF_H
#define SKEIN_ASM_PRELUDE_AARCH64_ELF_H

#define BTI_C hint #34

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define SKEIN_PROPERTY_BTI 1
#else
#define SKEIN_PROPERTY_BTI 0
#endif
#if defined(__ARM_FEATURE_PAC_DEFAULT) && __ARM_FEATURE_PAC_DEFAULT
#define SKEIN_PROPERTY_PAC 2
#else
#define SKEIN_PROPERTY_PAC 0
#endif

/* Assembler statements, not C: */
/* clang-format off */
#if SKEIN_PROPERTY_BTI || SKEIN_PROPERTY_PAC
#define SKEIN_GNU_PROPERTY_NOTE                                                                    \
        .pushsection .note.gnu.property, "a";                                                      \
        .p2align 3;                                                                                \
        .word   4;                /* name size: "GNU\0" */                                        \
        .word   16;               /* descriptor size */                                            \
        .word   5;                /* NT_GNU_PROPERTY_TYPE_0 */                                     \
        .asciz  "GNU";                                                                             \
        .word   0xc0000000;       /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */                         \
        .word   4;                /* property size */                                              \
        .word   SKEIN_PROPERTY_BTI | SKEIN_PROPERTY_PAC;                                           \
        .word   0;                /* pad to 8 bytes */                                             \
        .popsection
#else
#define SKEIN_GNU_PROPERTY_NOTE
#endif
/* clang-format on */

#endif
