// A host stand-in for the parts of the CUDA execution model that this folder's kernels use, so that
// the very same kernel sources compile as C++ and run on CPU tensors (test-only builds with
// -DOPS_EMULATE; slow). Every CUDA thread of a block is one OS thread; the blocks of a grid run one
// after the other, with a barrier between them, so that static arrays can play shared memory.
//
// Provided: __global__ / __device__ / __forceinline__ / __launch_bounds__ as plain C++, the built-in
// indices threadIdx, blockIdx, blockDim, gridDim (x, y, z), __syncthreads as a barrier of the block's
// threads, an atomic add, and cuda_emu::launch(grid, threads, body), which stands for
// `kernel<<<grid, threads>>>(...)` with `body` calling the kernel.
#ifndef OPS_CUDA_EMULATION_H
#define OPS_CUDA_EMULATION_H

#ifndef OPS_EMULATE
#error "cuda_emulation.h is for the host (emulated) builds only: compile with -DOPS_EMULATE"
#endif

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cuda_emu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// Reusable barrier (a generation counter): all `count` threads wait until the last one arrives.
class Barrier {
public:
    explicit Barrier(unsigned count) : count_(count) {}
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long generation = generation_;
        if (++arrived_ == count_) {
            arrived_ = 0;
            generation_++;
            released_.notify_all();
        } else {
            released_.wait(lock, [&] { return generation_ != generation; });
        }
    }
private:
    std::mutex mutex_;
    std::condition_variable released_;
    unsigned count_, arrived_ = 0;
    unsigned long generation_ = 0;
};

inline Barrier* g_block_barrier = nullptr;
inline std::mutex g_atomic_mutex;

template <typename T>
inline T atomic_add(T* address, T value) {
    std::lock_guard<std::mutex> lock(g_atomic_mutex);
    const T old = *address;
    *address = old + value;
    return old;
}

} // namespace cuda_emu

// The built-in variables, per emulated thread.
inline thread_local cuda_emu::Dim3 threadIdx;
inline thread_local cuda_emu::Dim3 blockIdx;
inline thread_local cuda_emu::Dim3 blockDim;
inline thread_local cuda_emu::Dim3 gridDim;

inline void __syncthreads() { cuda_emu::g_block_barrier->wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)

namespace cuda_emu {

// Runs `body` (which calls the kernel) for every block of `grid`, block after block, with `threads` OS
// threads (1-D blocks) playing the threads of each block.
inline void launch(Dim3 grid, unsigned threads, const std::function<void()>& body) {
    Barrier barrier(threads);
    g_block_barrier = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; t++) {
        pool.emplace_back([&, t] {
            threadIdx = Dim3{t, 0, 0};
            blockDim = Dim3{threads, 1, 1};
            gridDim = grid;
            for (unsigned z = 0; z < grid.z; z++)
                for (unsigned y = 0; y < grid.y; y++)
                    for (unsigned x = 0; x < grid.x; x++) {
                        blockIdx = Dim3{x, y, z};
                        body();
                        barrier.wait();   // nobody starts the next block while one still runs
                    }
        });
    }
    for (auto& thread : pool)
        thread.join();
    g_block_barrier = nullptr;
}

} // namespace cuda_emu

#endif // OPS_CUDA_EMULATION_H
