// Fibers: many call stacks on one host thread, switched by hand (no OS threads, no locks).
//
// The cooperative emulation (host_cooperative.h) runs each emulated CUDA thread as a fiber.
// A fiber runs until it calls fiber_switch() itself; nothing preempts it, so which code runs
// when is decided entirely by the scheduler, and results never depend on timing.
//
//   fiber_init(ctx, stack, entry, arg)   prepare ctx so that switching to it calls entry(arg)
//                                        on `stack` (entry must never return)
//   fiber_switch(from, to)               save the running context into `from`, resume `to`
//   StackPool::acquire() / release()     fixed-size stacks with a guard page below each,
//                                        kept for reuse by later launches
//
// On x86-64 the switch is a few instructions (callee-saved registers, MXCSR and the x87
// control word pushed on the old stack, the stack pointer swapped); elsewhere, or with
// RNNCORE_FIBER_UCONTEXT defined, it falls back to POSIX ucontext (slower: a system call
// per switch). One launch at a time: the emulation is not re-entrant.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#if !defined(__x86_64__) && !defined(RNNCORE_FIBER_UCONTEXT)
#define RNNCORE_FIBER_UCONTEXT 1
#endif
#ifdef RNNCORE_FIBER_UCONTEXT
#include <ucontext.h>
#endif

#ifndef RNNCORE_FIBER_STACK_BYTES
#define RNNCORE_FIBER_STACK_BYTES (128u * 1024u)  // per emulated thread; 4 KiB is a guard
#endif

namespace rnncore_host {

[[noreturn]] inline void emulation_error(const char* message) {
    std::fprintf(stderr, "rnncore emulation error: %s\n", message);
    std::fflush(stderr);
    std::abort();
}

using FiberEntry = void (*)(void*);

#ifndef RNNCORE_FIBER_UCONTEXT
// The saved context is the stack pointer: the registers it needs are on that stack.
struct FiberContext {
    void* sp = nullptr;
};

// switch_stack(save, load): push rbp rbx r12-r15 and the FP control words, store rsp in
// *save, take rsp = load, pop the same in reverse and return into the resumed fiber.
__attribute__((naked, noinline)) static void switch_stack(void** /*save*/, void* /*load*/) {
    asm volatile(
        "pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "subq $8, %rsp\n\t"
        "stmxcsr (%rsp)\n\t"
        "fnstcw 4(%rsp)\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "ldmxcsr (%rsp)\n\t"
        "fldcw 4(%rsp)\n\t"
        "addq $8, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}

// A new fiber's first switch "returns" here with entry in rbx and its argument in r12.
__attribute__((naked, noinline)) static void fiber_trampoline() {
    asm volatile(
        "movq %r12, %rdi\n\t"
        "callq *%rbx\n\t"
        "ud2\n\t");  // entry never returns
}

inline void fiber_init(FiberContext& ctx, char* stack_low, std::size_t size, FiberEntry entry,
                       void* arg) {
    const std::uintptr_t top = (reinterpret_cast<std::uintptr_t>(stack_low) + size) & ~std::uintptr_t(15);
    std::uint64_t* sp = reinterpret_cast<std::uint64_t*>(top - 80);  // rsp = top - 16 after ret
    std::uint32_t mxcsr;
    std::uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = mxcsr | (std::uint64_t(fpucw) << 32);  // the launcher's rounding and FTZ modes
    sp[1] = sp[2] = sp[3] = 0;                        // r15 r14 r13
    sp[4] = reinterpret_cast<std::uint64_t>(arg);     // r12
    sp[5] = reinterpret_cast<std::uint64_t>(entry);   // rbx
    sp[6] = 0;                                        // rbp
    sp[7] = reinterpret_cast<std::uint64_t>(&fiber_trampoline);
    ctx.sp = sp;
}

inline void fiber_switch(FiberContext& from, FiberContext& to) { switch_stack(&from.sp, to.sp); }

#else   // POSIX ucontext
struct FiberContext {
    ucontext_t uc;
    FiberEntry entry = nullptr;
    void* arg = nullptr;
};

static void ucontext_trampoline(unsigned hi, unsigned lo) {
    auto* ctx = reinterpret_cast<FiberContext*>((std::uintptr_t(hi) << 32) | lo);
    ctx->entry(ctx->arg);
    emulation_error("a fiber's entry returned");
}

inline void fiber_init(FiberContext& ctx, char* stack_low, std::size_t size, FiberEntry entry,
                       void* arg) {
    ctx.entry = entry;
    ctx.arg = arg;
    if (getcontext(&ctx.uc) != 0) emulation_error("getcontext failed");
    ctx.uc.uc_stack.ss_sp = stack_low;
    ctx.uc.uc_stack.ss_size = size;
    ctx.uc.uc_link = nullptr;
    const std::uint64_t p = reinterpret_cast<std::uintptr_t>(&ctx);
    makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_trampoline), 2,
                unsigned(p >> 32), unsigned(p & 0xffffffffu));
}

inline void fiber_switch(FiberContext& from, FiberContext& to) {
    if (swapcontext(&from.uc, &to.uc) != 0) emulation_error("swapcontext failed");
}
#endif

// Stacks of RNNCORE_FIBER_STACK_BYTES, the lowest page of each left inaccessible so that an
// overflow faults instead of overwriting a neighbour. Released stacks are reused.
class StackPool {
  public:
    static constexpr std::size_t bytes = RNNCORE_FIBER_STACK_BYTES;

    char* acquire() {
        if (!free_.empty()) {
            char* s = free_.back();
            free_.pop_back();
            return s;
        }
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) emulation_error("out of memory for fiber stacks");
        mprotect(p, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);
        return static_cast<char*>(p);
    }
    void release(char* stack) { free_.push_back(stack); }

  private:
    std::vector<char*> free_;
};

}  // namespace rnncore_host
