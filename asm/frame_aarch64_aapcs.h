/* Layout of a suspended AAPCS64 context, shared by switch_aarch64_aapcs_elf.S and C++
 * (asm/frame_check.cpp checks every offset with static_assert). A context handle is the stack
 * pointer of the suspended context, which points at this frame:
 *
 *   0x00  FPCR (8 bytes)        read and written as a 64-bit system register
 *   0x08  padding               keeps the frame a multiple of 16 bytes; never read
 *   0x10  X19, X20              (a fresh context keeps its entry function in X19)
 *   0x20  X21, X22
 *   0x30  X23, X24
 *   0x40  X25, X26
 *   0x50  X27, X28
 *   0x60  X29 (FP), X30 (LR)    the frame record; X30 is where the context resumes
 *   0x70  D8, D9                low 64 bits of V8-V15: all AAPCS64 keeps of them
 *   0x80  D10, D11
 *   0x90  D12, D13
 *   0xa0  D14, D15
 *   0xb0  (caller's frame)      for a fresh context: the 16-byte aligned stack top
 *
 * Each register pair is one stp/ldp at a 16-byte aligned offset, so no access straddles a cache line.
 */
#ifndef SKEIN_ASM_FRAME_AARCH64_AAPCS_H
#define SKEIN_ASM_FRAME_AARCH64_AAPCS_H

#define SKEIN_FRAME_FPCR 0x00
#define SKEIN_FRAME_X19 0x10
#define SKEIN_FRAME_X21 0x20
#define SKEIN_FRAME_X23 0x30
#define SKEIN_FRAME_X25 0x40
#define SKEIN_FRAME_X27 0x50
#define SKEIN_FRAME_X29 0x60
#define SKEIN_FRAME_D8 0x70
#define SKEIN_FRAME_D10 0x80
#define SKEIN_FRAME_D12 0x90
#define SKEIN_FRAME_D14 0xa0
#define SKEIN_FRAME_SIZE 0xb0

/* The second register of each pair, for C++ and for the .cfi notes. */
#define SKEIN_FRAME_X20 (SKEIN_FRAME_X19 + 8)
#define SKEIN_FRAME_X22 (SKEIN_FRAME_X21 + 8)
#define SKEIN_FRAME_X24 (SKEIN_FRAME_X23 + 8)
#define SKEIN_FRAME_X26 (SKEIN_FRAME_X25 + 8)
#define SKEIN_FRAME_X28 (SKEIN_FRAME_X27 + 8)
#define SKEIN_FRAME_X30 (SKEIN_FRAME_X29 + 8)
#define SKEIN_FRAME_D9 (SKEIN_FRAME_D8 + 8)
#define SKEIN_FRAME_D11 (SKEIN_FRAME_D10 + 8)
#define SKEIN_FRAME_D13 (SKEIN_FRAME_D12 + 8)
#define SKEIN_FRAME_D15 (SKEIN_FRAME_D14 + 8)

#endif
