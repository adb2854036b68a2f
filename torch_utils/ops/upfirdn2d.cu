// CUDA kernel of upfirdn2d: one thread per output pixel, visiting only the filter taps
// that land on non-inserted (nonzero) input samples.
//
// Compiled by nvcc for the plugin, or as C++ on the host by the test-only emulated build
// (upfirdn2d.cpp with -DOPS_EMULATE includes this file; see cuda_emulation.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#ifdef OPS_EMULATE
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#endif

#include "upfirdn2d.h"

template <typename T> struct OpMath { typedef float type; };
template <> struct OpMath<double> { typedef double type; };

// For output position o along one axis: the first tap t >= 0 such that
// j = o * down + t - pad is a multiple of up with j >= 0, and the last usable tap.
struct TapRange { int first; int last; int64_t first_in; };

__device__ __forceinline__ TapRange tap_range(int64_t o, int down, int up, int64_t pad,
                                              int taps, int64_t in_size) {
    TapRange r;
    const int64_t j0 = o * down - pad;               // upsampled coordinate of tap 0
    int64_t t = j0 < 0 ? -j0 : 0;                    // first tap with j >= 0
    int64_t rem = (j0 + t) % up;
    if (rem != 0)
        t += up - rem;                               // first tap on an input sample
    int64_t t_end = (in_size - 1) * up - j0;         // last tap with input index < in_size
    if (t_end > taps - 1)
        t_end = taps - 1;
    r.first = static_cast<int>(t < taps ? t : taps);
    r.last = static_cast<int>(t_end < -1 ? -1 : t_end);
    r.first_in = (j0 + t) / up;
    return r;
}

template <typename T>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p) {
    typedef typename OpMath<T>::type A;
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const int64_t total = p.n * p.c * p.out_h * p.out_w;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;

    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t n, c, oy, ox, rest = i;
        if (p.channels_last) {
            c = rest % p.c; rest /= p.c;
            ox = rest % p.out_w; rest /= p.out_w;
            oy = rest % p.out_h; n = rest / p.out_h;
        } else {
            ox = rest % p.out_w; rest /= p.out_w;
            oy = rest % p.out_h; rest /= p.out_h;
            c = rest % p.c; n = rest / p.c;
        }
        const TapRange ry = tap_range(oy, p.down_y, p.up_y, p.pad_y0, p.f_h, p.in_h);
        const TapRange rx = tap_range(ox, p.down_x, p.up_x, p.pad_x0, p.f_w, p.in_w);
        const T* xp = x + n * p.x_stride[0] + c * p.x_stride[1];

        A acc = A(0);
        int64_t iy = ry.first_in;
        for (int ty = ry.first; ty <= ry.last; ty += p.up_y, iy++) {
            const int fy = p.flip_filter ? ty : p.f_h - 1 - ty;
            const T* row = xp + iy * p.x_stride[2];
            int64_t ix = rx.first_in;
            for (int tx = rx.first; tx <= rx.last; tx += p.up_x, ix++) {
                const int fx = p.flip_filter ? tx : p.f_w - 1 - tx;
                const A w = A(p.f[fy * p.f_w + fx] * p.gain);   // gain applied in float32, as the reference does
                acc += A(row[ix * p.x_stride[3]]) * w;
            }
        }
        y[n * p.y_stride[0] + c * p.y_stride[1] + oy * p.y_stride[2] + ox * p.y_stride[3]] = T(acc);
    }
}

void launch_upfirdn2d(const Upfirdn2dParams& p, c10::ScalarType dtype) {
    const int threads = 256;
    const int64_t total = p.n * p.c * p.out_h * p.out_w;
    int64_t blocks = (total + threads - 1) / threads;
    blocks = blocks < 65536 ? blocks : 65536;
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(dtype, "upfirdn2d_cuda", [&] {
#ifdef OPS_EMULATE
        cuda_emu::launch(cuda_emu::Dim3{static_cast<unsigned>(blocks)}, threads, [&] { upfirdn2d_kernel<scalar_t>(p); });
#else
        upfirdn2d_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
#endif
    });
#ifndef OPS_EMULATE
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}
