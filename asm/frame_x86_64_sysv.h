/* Layout of a suspended x86-64 System V context, shared by switch_x86_64_sysv_elf.S and C++
 * (asm/frame_check.cpp checks every offset with static_assert). A context handle is the stack pointer of
 * the suspended context, which points at this frame:
 *
 *   0x00  MXCSR (4 bytes)       control bits restored; exception flags ignored
 *   0x04  x87 control word (2)  then 2 bytes of padding, never read
 *   0x08  R12                   (a fresh context keeps its entry function here)
 *   0x10  R13
 *   0x18  R14
 *   0x20  R15
 *   0x28  RBX
 *   0x30  RBP
 *   0x38  return address        where the context resumes
 *   0x40  (caller's frame)      for a fresh context: the 16-byte aligned stack top
 */
#ifndef SKEIN_ASM_FRAME_X86_64_SYSV_H
#define SKEIN_ASM_FRAME_X86_64_SYSV_H

#define SKEIN_FRAME_MXCSR 0x00
#define SKEIN_FRAME_X87CW 0x04
#define SKEIN_FRAME_R12 0x08
#define SKEIN_FRAME_R13 0x10
#define SKEIN_FRAME_R14 0x18
#define SKEIN_FRAME_R15 0x20
#define SKEIN_FRAME_RBX 0x28
#define SKEIN_FRAME_RBP 0x30
#define SKEIN_FRAME_RIP 0x38
#define SKEIN_FRAME_SIZE 0x40

#endif
