/* Switch probes for x86-64 System V (see switch_probe.hpp). */

        .text

/* uint32_t skein_probe_callee_saved(void **clobber_ctx: rdi, jump_fn: rsi)
 * Frame: 0x00 caller MXCSR, 0x04 caller x87 CW, 0x08 clobber_ctx, 0x10 scratch MXCSR,
 *        0x14 scratch x87 CW. */
        .globl  skein_probe_callee_saved
        .type   skein_probe_callee_saved, @function
        .p2align 4
skein_probe_callee_saved:
        endbr64
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        subq    $24, %rsp                   /* 6 pushes + 24: RSP 16-byte aligned for the call */
        stmxcsr 0x00(%rsp)                  /* the caller's FP control, restored at the end */
        fnstcw  0x04(%rsp)
        movq    %rdi, 0x08(%rsp)
        movl    $0x3f80, 0x10(%rsp)         /* MXCSR: round down, all exceptions masked */
        ldmxcsr 0x10(%rsp)
        movw    $0x0b7f, 0x14(%rsp)         /* x87: round up, extended precision */
        fldcw   0x14(%rsp)
        movabsq $0x1111111111111111, %rbx
        movabsq $0x2222222222222222, %rbp
        movabsq $0x3333333333333333, %r12
        movabsq $0x4444444444444444, %r13
        movabsq $0x5555555555555555, %r14
        movabsq $0x6666666666666666, %r15
        movq    %rsi, %rax                  /* jump(*clobber_ctx, data = jump) */
        movq    (%rdi), %rdi
        call    *%rax
        movq    0x08(%rsp), %rcx
        movq    %rax, (%rcx)                /* the clobber context's new handle */

        xorl    %eax, %eax
        movabsq $0x1111111111111111, %rcx
        cmpq    %rcx, %rbx
        je      1f
        orl     $0x01, %eax
1:      movabsq $0x2222222222222222, %rcx
        cmpq    %rcx, %rbp
        je      1f
        orl     $0x02, %eax
1:      movabsq $0x3333333333333333, %rcx
        cmpq    %rcx, %r12
        je      1f
        orl     $0x04, %eax
1:      movabsq $0x4444444444444444, %rcx
        cmpq    %rcx, %r13
        je      1f
        orl     $0x08, %eax
1:      movabsq $0x5555555555555555, %rcx
        cmpq    %rcx, %r14
        je      1f
        orl     $0x10, %eax
1:      movabsq $0x6666666666666666, %rcx
        cmpq    %rcx, %r15
        je      1f
        orl     $0x20, %eax
1:      stmxcsr 0x10(%rsp)
        movl    0x10(%rsp), %ecx
        andl    $0xffc0, %ecx               /* control bits only */
        cmpl    $0x3f80, %ecx
        je      1f
        orl     $0x80000000, %eax
1:      fnstcw  0x14(%rsp)
        movzwl  0x14(%rsp), %ecx
        cmpl    $0x0b7f, %ecx
        je      1f
        orl     $0x80000000, %eax
1:      ldmxcsr 0x00(%rsp)
        fldcw   0x04(%rsp)
        addq    $24, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .size   skein_probe_callee_saved, .-skein_probe_callee_saved

/* void skein_probe_clobber_entry({from: rdi, jump: rsi}) — never returns.
 * Frame: 0x00 jump function, 0x08 scratch MXCSR, 0x0c scratch x87 CW. */
        .globl  skein_probe_clobber_entry
        .type   skein_probe_clobber_entry, @function
        .p2align 4
skein_probe_clobber_entry:
        endbr64
        subq    $24, %rsp                   /* entry RSP is 8 mod 16; now 16-byte aligned */
        movq    %rsi, 0x00(%rsp)
2:      movl    $0x7f80, 0x08(%rsp)         /* MXCSR: round toward zero */
        ldmxcsr 0x08(%rsp)
        movw    $0x0f7f, 0x0c(%rsp)         /* x87: round toward zero */
        fldcw   0x0c(%rsp)
        movabsq $0x0badbadbadbadbad, %rbx
        movq    %rbx, %rbp
        movq    %rbx, %r12
        movq    %rbx, %r13
        movq    %rbx, %r14
        movq    %rbx, %r15
        movq    0x00(%rsp), %rax
        movq    %rax, %rsi                  /* jump(from, data = jump) */
        call    *%rax
        movq    %rax, %rdi                  /* resumed: {rax: from, rdx: jump} */
        movq    %rdx, 0x00(%rsp)
        jmp     2b
        .size   skein_probe_clobber_entry, .-skein_probe_clobber_entry

/* void skein_probe_alignment_entry({from: rdi, jump: rsi}) — never returns. */
        .globl  skein_probe_alignment_entry
        .type   skein_probe_alignment_entry, @function
        .p2align 4
skein_probe_alignment_entry:
        endbr64
        movq    %rsi, %rax
        leaq    8(%rsp), %rsi               /* RSP + 8 must be a multiple of 16 at entry */
        andq    $15, %rsi
        subq    $8, %rsp                    /* align for the call */
        call    *%rax                       /* jump(from, misalignment) */
        ud2                                 /* never resumed */
        .size   skein_probe_alignment_entry, .-skein_probe_alignment_entry

        .section .note.GNU-stack,"",%progbits
