// Fused modulated convolution (StyleGAN2 eq. 1 and the per-row eq. 2 of
// "Overparameterization Improves StyleGAN Inversion"): shared declarations.
//
// Both kernels are implicit GEMMs over one sample n at a time; the per-sample
// weight `W[o,i,t] * S[n,o,i] * d[n,o]` is formed tile by tile in shared memory
// and never written to global memory.
//
//   conv  : y[n, r, Y, X] = sum_{c, t} A[n, r, c, t] * x[n, c, iy(t), ix(t)]  (+ noise)
//           mode 0 (forward): r = o, c = i;  mode 1 (grad wrt x): r = i, c = o.
//   wgrad : G[n, o, i, t]  = sum_{pixels} gy[n, o, Y, X] * x[n, i, iy(t), ix(t)],
//           reduced in the block to  dW[o, i, t] = sum_n d S G  and
//           dSraw[n, o, i] = sum_t W G  (so [N, O, I, k, k] never reaches memory).
//
// Geometry: an output grid is split into "phases" (1 for a stride-1 conv, up^2
// for a stride-`up` transposed conv). Phase pixel (my, mx) is the output pixel
// (yb + ys*my, xb + xs*mx) and reads input pixel (isy*my + dy[t], isx*mx + dx[t])
// with weight tap tw[t] (= ky*kw + kx). Out-of-range input pixels read as zero.
//
// With OPS_EMULATE defined, the portability layer below maps onto the host
// emulator of the CUDA execution model (cuda_emulation.h: one OS thread per CUDA
// thread, a barrier for __syncthreads, static arrays for shared memory), so that
// the very same kernel source can be unit-tested on a machine without a GPU.
#ifndef MODULATED_CONV2D_DECLS_H
#define MODULATED_CONV2D_DECLS_H

#include <cstdint>
#include <c10/core/ScalarType.h>

namespace mc {

constexpr int kMaxTaps = 32;    // kh * kw of one phase
constexpr int kMaxPhases = 4;   // up = 2 -> 4 phases
constexpr int kThreads = 256;   // threads per block
constexpr int kBK = 16;         // reduction depth of one tile

struct Phase {
    int yb, ys, my;             // output rows    Y = yb + ys * m, m in [0, my)
    int xb, xs, mx;             // output columns X = xb + xs * m, m in [0, mx)
    int isy, isx;               // input pixel = (isy * my + dy[t], isx * mx + dx[t])
    int taps;                   // number of taps t of this phase
    int dy[kMaxTaps], dx[kMaxTaps], tw[kMaxTaps];
};

struct Geom {
    int num_phases;
    Phase ph[kMaxPhases];
};

// One conv launch: mode 0 (forward) or mode 1 (gradient wrt the input).
template <typename acc_t>
struct ConvParams {
    const void* x;      int64_t x_s[4];    // input  [N, C, Hin, Win], x dtype, any strides
    void* y;            int64_t y_s[4];    // output [N, R, Hout, Wout], x dtype
    const void* noise;  int64_t n_s[4];    // nullptr or a view broadcast to [N, R, Hout, Wout]
    const acc_t* w;     int64_t w_r, w_c;  // weight element (r, c, tap) = w[r*w_r + c*w_c + tap]
    const acc_t* s;     int64_t s_n, s_r, s_c;
    const acc_t* d;     int64_t d_n, d_r, d_c;
    int N, R, C, Hin, Win, Hout, Wout;
    Geom g;
};

// One weight/style-gradient launch (reductions of the forward geometry).
template <typename acc_t>
struct WgradParams {
    const void* gy;     int64_t gy_s[4];   // [N, O, Hout, Wout], x dtype
    const void* x;      int64_t x_s[4];    // [N, I, Hin, Win],   x dtype
    const acc_t* w;                        // [O, I, KK] contiguous
    const acc_t* s;     int64_t s_n, s_o, s_i;
    const acc_t* d;     int64_t d_n, d_o;
    acc_t* dw;                             // [O, I, KK] contiguous, zero-initialised
    acc_t* dsraw;                          // [N, O, I]  contiguous, zero-initialised
    int N, O, I, KK, Hin, Win, Hout, Wout;
    int bi;                                // input channels per column tile
    int nsplit, psplit;                    // blocks per (o, i) tile along n and along pixels
    Geom g;
};

// Tile shapes (rows x columns); `config` selects one, -1 = automatic.
// conv : 0 = 64 x 64, 1 = 128 x 16 (few pixels), 2 = 16 x 128 (few rows, e.g. toRGB)
// wgrad: 0 = 64 x 64, 2 = 16 x 128 (O <= 16)
// tensor_cores: WMMA tiles (FP16/BF16 x: FP16/BF16 products; FP32 x: TF32), FP32 accumulation;
// otherwise FP32 (FP64 for double) FMA. Ignored for double.
void conv(const ConvParams<float>& p, c10::ScalarType xtype, int config, bool tensor_cores);
void conv(const ConvParams<double>& p, c10::ScalarType xtype, int config, bool tensor_cores);
void wgrad(const WgradParams<float>& p, c10::ScalarType xtype, int config, bool tensor_cores);
void wgrad(const WgradParams<double>& p, c10::ScalarType xtype, int config, bool tensor_cores);

} // namespace mc

//----------------------------------------------------------------------------
// Portability layer: CUDA, or the CPU emulator.

#ifdef OPS_EMULATE
#include "cuda_emulation.h"
#define MC_SHARED static
#define MC_GRID_CONST const
#define MC_ATOMIC_ADD(ptr, v) cuda_emu::atomic_add((ptr), (v))
using mc_dim3 = cuda_emu::Dim3;
#else
#define MC_SHARED __shared__
#define MC_GRID_CONST const __grid_constant__
#define MC_ATOMIC_ADD(ptr, v) atomicAdd((ptr), (v))
#endif

#define MC_GLOBAL __global__
#define MC_BOUNDS __launch_bounds__(mc::kThreads)
#define MC_DEV __device__ __forceinline__
#define MC_SYNC() __syncthreads()
#define MC_TID (static_cast<int>(threadIdx.x))
#define MC_BID_X (static_cast<int>(blockIdx.x))
#define MC_BID_Y (static_cast<int>(blockIdx.y))
#define MC_BID_Z (static_cast<int>(blockIdx.z))

#endif // MODULATED_CONV2D_DECLS_H
