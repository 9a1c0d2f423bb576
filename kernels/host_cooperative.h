// Cooperative launches on the host: threads that share memory and wait at barriers.
//
//   RNNCORE_HOST_EXPORT_COOPERATIVE(name, kernel<...>) defines
//
//       extern "C" void name(const unsigned grid[3], const unsigned block[3],
//                            unsigned shared_bytes, void** args)
//
//   with args as cuLaunchKernel takes them (an array of pointers to each value) and
//   shared_bytes the dynamic shared memory of the launch (cuLaunchKernel's sharedMemBytes).
//
// Every emulated CUDA thread is a fiber (host_fiber.h). The scheduler's rules:
//   * Blocks start in order (x fastest, then y, z); threads of a block are resumed in order
//     (threadIdx.x fastest). A resumed thread runs until it waits at a barrier or returns.
//   * __syncthreads(): when every thread of the block waits at it, all go on.
//   * grid_barrier(): a block whose threads all wait there is parked and the next block
//     starts; when every block of the grid is parked, they all go on, in block order.
//     A kernel that never reaches it holds one block's fibers at a time.
//   * Anything else is misuse and aborts with a message instead of hanging: a thread that
//     returns while others of its block wait, threads of one block waiting at different
//     kinds of barrier, a block that returns while others wait at grid_barrier(), a barrier
//     called from a non-cooperative launch (RNNCORE_HOST_EXPORT's plain loop).
// Only the scheduler decides who runs, so results do not depend on timing.
//
// Shared memory, per block:
//   * RNNCORE_SHARED(T, name, count) (cooperate.cuh) declares `T* const name`, pointing at
//     count values in this block's static arena (RNNCORE_STATIC_SHARED_BYTES, 48 KiB as in
//     CUDA). Arrays get offsets in the order a thread declares them, so every thread of a
//     block must declare the same arrays in the same order (unconditionally, at kernel
//     scope); a mismatch aborts. Being per block, it survives grid_barrier() correctly.
//   * `__shared__ T a[N];` becomes a plain `static`: one copy for the whole launch. That is
//     right for kernels that never call grid_sync() (one block runs at a time), and wrong
//     for those that do: they must use RNNCORE_SHARED. (GCC ignores a section attribute on
//     statics of templates, so the emulation cannot find and swap them per block.)
//   * dynamic shared memory: dynamic_shared_memory() returns this block's buffer of
//     shared_bytes (16-byte aligned); cooperate.cuh spells it dynamic_shared<T>().
//   Arenas start filled with 0xFF bytes (NaN as float/double), so a read of a value no thread
//   wrote shows up instead of passing by luck.
#pragma once
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "host_fiber.h"

#define __shared__ static

#ifndef RNNCORE_STATIC_SHARED_BYTES
#define RNNCORE_STATIC_SHARED_BYTES (48u * 1024u)
#endif

namespace rnncore_host {

enum class State : unsigned char { runnable, at_block_barrier, at_grid_barrier, returned };

struct Block;
struct Launch;

struct Thread {
    FiberContext context;
    char* stack = nullptr;
    dim3 index;
    State state = State::runnable;
    Block* block = nullptr;
    Launch* launch = nullptr;
    std::size_t shared_used = 0;      // bytes of the static arena this thread has declared
    std::size_t shared_declared = 0;  // RNNCORE_SHARED arrays this thread has declared
};

struct SharedArray {
    std::size_t offset, bytes;
};

struct Block {
    dim3 index;
    std::vector<Thread> threads;
    std::vector<std::max_align_t> static_shared;   // RNNCORE_SHARED arrays
    std::vector<SharedArray> static_layout;         // their places, in declaration order
    std::vector<std::max_align_t> dynamic_shared;
};

// The cooperative launch in progress (one at a time).
struct Launch {
    FiberContext scheduler;
    Thread* current = nullptr;
    void (*body)(void* values) = nullptr;
    void* values = nullptr;
    unsigned shared_bytes = 0;
};

static Launch* active_launch = nullptr;
static StackPool stack_pool;

inline std::string describe(dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// Called on the thread's fiber: wait until the scheduler resumes it past the barrier.
__attribute__((noinline)) static void wait_at(State barrier, const char* what) {
    Launch* launch = active_launch;
    if (launch == nullptr || launch->current == nullptr)
        emulation_error((std::string(what) + " called outside a cooperative launch: export "
                         "the kernel with RNNCORE_HOST_EXPORT_COOPERATIVE").c_str());
    Thread* self = launch->current;
    self->state = barrier;
    fiber_switch(self->context, launch->scheduler);
    threadIdx = self->index;  // resumed: every thread has reached the barrier
    blockIdx = self->block->index;
}

// The memory clobbers make the compiler store shared values before the switch and reload
// them after it, as a CUDA barrier does.
inline void block_barrier() {
    asm volatile("" ::: "memory");
    wait_at(State::at_block_barrier, "__syncthreads()");
    asm volatile("" ::: "memory");
}

inline void grid_barrier() {
    asm volatile("" ::: "memory");
    wait_at(State::at_grid_barrier, "grid_sync()");
    asm volatile("" ::: "memory");
}

inline void allocate_poisoned(std::vector<std::max_align_t>& arena, std::size_t bytes) {
    arena.resize((bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
    std::memset(static_cast<void*>(arena.data()), 0xFF, arena.size() * sizeof(std::max_align_t));
}

inline Thread& current_thread(const char* what) {
    Launch* launch = active_launch;
    if (launch == nullptr || launch->current == nullptr)
        emulation_error((std::string(what) + " used outside a cooperative launch: export "
                         "the kernel with RNNCORE_HOST_EXPORT_COOPERATIVE").c_str());
    return *launch->current;
}

inline void* dynamic_shared_memory() {
    return current_thread("dynamic shared memory").block->dynamic_shared.data();
}

// The next RNNCORE_SHARED array of this thread: the same place for every thread of the block.
inline void* static_shared_array(std::size_t bytes, std::size_t align) {
    Thread& self = current_thread("RNNCORE_SHARED");
    Block& b = *self.block;
    if (b.static_shared.empty()) allocate_poisoned(b.static_shared, RNNCORE_STATIC_SHARED_BYTES);
    const std::size_t offset = (self.shared_used + align - 1) / align * align;
    const std::size_t k = self.shared_declared++;
    self.shared_used = offset + bytes;
    if (self.shared_used > RNNCORE_STATIC_SHARED_BYTES)
        emulation_error("RNNCORE_SHARED arrays exceed RNNCORE_STATIC_SHARED_BYTES per block");
    if (k == b.static_layout.size()) {
        b.static_layout.push_back(SharedArray{offset, bytes});
    } else if (k > b.static_layout.size() || b.static_layout[k].offset != offset ||
               b.static_layout[k].bytes != bytes) {
        emulation_error(("thread " + describe(self.index) + " of block " + describe(b.index) +
                         " declares RNNCORE_SHARED array #" + std::to_string(k) +
                         " unlike the threads before it: declare the same arrays in the "
                         "same order in every thread").c_str());
    }
    return reinterpret_cast<unsigned char*>(b.static_shared.data()) + offset;
}

template <typename T> T* static_shared(std::size_t count) {
    const std::size_t align = alignof(T) > 16 ? alignof(T) : 16;
    return static_cast<T*>(static_shared_array(count * sizeof(T), align));
}

static void thread_main(void* arg) {
    Thread* self = static_cast<Thread*>(arg);
    self->launch->body(self->launch->values);
    self->state = State::returned;
    fiber_switch(self->context, self->launch->scheduler);
    emulation_error("a returned thread was resumed");
}

inline std::unique_ptr<Block> start_block(Launch& launch, dim3 index) {
    auto b = std::make_unique<Block>();
    b->index = index;
    allocate_poisoned(b->dynamic_shared, launch.shared_bytes);
    b->threads.resize(std::size_t(blockDim.x) * blockDim.y * blockDim.z);
    std::size_t k = 0;
    for (unsigned z = 0; z < blockDim.z; ++z)
        for (unsigned y = 0; y < blockDim.y; ++y)
            for (unsigned x = 0; x < blockDim.x; ++x, ++k) {
                Thread& t = b->threads[k];
                t.index = dim3{x, y, z};
                t.block = b.get();
                t.launch = &launch;
                t.stack = stack_pool.acquire();
                fiber_init(t.context, t.stack, StackPool::bytes, &thread_main, &t);
            }
    return b;
}

inline void end_block(Block& b) {
    for (Thread& t : b.threads) stack_pool.release(t.stack);
}

[[noreturn]] inline void barrier_misuse(const Block& b) {
    std::size_t counts[4] = {0, 0, 0, 0};
    const Thread* first[4] = {nullptr, nullptr, nullptr, nullptr};
    for (const Thread& t : b.threads) {
        const int s = static_cast<int>(t.state);
        if (!counts[s]++) first[s] = &t;
    }
    static const char* names[4] = {"running", "at __syncthreads()", "at grid_sync()", "returned"};
    std::string message = "barrier not reached by every thread of block " + describe(b.index) + ":";
    for (int s = 1; s < 4; ++s)
        if (counts[s])
            message += " " + std::to_string(counts[s]) + " thread(s) " + names[s] +
                       " (first: thread " + describe(first[s]->index) + ");";
    emulation_error(message.c_str());
}

// Run block b until all its threads have returned (false) or wait at grid_sync (true).
inline bool run_block(Launch& launch, Block& b) {
    for (;;) {
        blockIdx = b.index;
        for (Thread& t : b.threads) {
            if (t.state != State::runnable) continue;
            threadIdx = t.index;
            launch.current = &t;
            fiber_switch(launch.scheduler, t.context);
        }
        launch.current = nullptr;
        std::size_t counts[4] = {0, 0, 0, 0};
        for (const Thread& t : b.threads) ++counts[static_cast<int>(t.state)];
        const std::size_t n = b.threads.size();
        if (counts[int(State::returned)] == n) return false;
        if (counts[int(State::at_grid_barrier)] == n) return true;
        if (counts[int(State::at_block_barrier)] != n) barrier_misuse(b);
        for (Thread& t : b.threads) t.state = State::runnable;
    }
}

[[noreturn]] inline void grid_misuse(const Block& returned, std::size_t waiting, std::size_t blocks) {
    emulation_error(("grid_sync() not reached by every block: block " + describe(returned.index) +
                     " returned while " + std::to_string(waiting) + " of " +
                     std::to_string(blocks) + " blocks wait at it").c_str());
}

template <typename Values, auto Kernel> void run_kernel(void* values) {
    std::apply(Kernel, *static_cast<Values*>(values));
}

template <auto Kernel>
void launch_cooperative(const unsigned* grid, const unsigned* block, unsigned shared_bytes,
                        void** args) {
    if (active_launch != nullptr) emulation_error("a cooperative launch is already running");
    auto values = Signature<decltype(Kernel)>::unpack(args);
    Launch launch;
    launch.body = &run_kernel<decltype(values), Kernel>;
    launch.values = &values;
    launch.shared_bytes = shared_bytes;
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    const std::size_t blocks = std::size_t(grid[0]) * grid[1] * grid[2];
    active_launch = &launch;

    // First wave: start every block in order; keep those parked at grid_sync.
    std::vector<std::unique_ptr<Block>> parked;
    std::unique_ptr<Block> returned;  // the first block that ran to its end
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                auto b = start_block(launch, dim3{x, y, z});
                if (run_block(launch, *b)) {
                    if (returned) grid_misuse(*returned, parked.size() + 1, blocks);
                    parked.push_back(std::move(b));
                } else {
                    if (!parked.empty()) grid_misuse(*b, parked.size(), blocks);
                    end_block(*b);
                    if (!returned) returned = std::move(b);
                }
            }
    // Later waves: every block waits at grid_sync; release them all, in block order.
    while (!parked.empty()) {
        std::size_t still = 0;
        const Block* ended = nullptr;
        for (auto& b : parked) {
            for (Thread& t : b->threads) t.state = State::runnable;
            if (run_block(launch, *b)) ++still;
            else if (!ended) ended = b.get();
        }
        if (still != 0 && ended) grid_misuse(*ended, still, blocks);
        if (still == 0) {
            for (auto& b : parked) end_block(*b);
            parked.clear();
        }
    }
    active_launch = nullptr;
}

}  // namespace rnncore_host

#define __syncthreads() rnncore_host::block_barrier()

#define RNNCORE_HOST_EXPORT_COOPERATIVE(name, ...)                                       \
    extern "C" void name(const unsigned* grid, const unsigned* block,                     \
                         unsigned shared_bytes, void** args) {                            \
        rnncore_host::launch_cooperative<&__VA_ARGS__>(grid, block, shared_bytes, args); \
    }
