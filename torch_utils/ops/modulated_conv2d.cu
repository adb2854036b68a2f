// Fused modulated convolution kernels (see modulated_conv2d.h for the maths and the geometry).
//
// Two inner-product cores share the tile loaders and the epilogues:
//   FmaCore     FP32 (FP64 for double) fused multiply-adds, TM x TN outputs per thread;
//   TensorCore  WMMA 16x16 fragments, 8 warps: FP16 / BF16 tiles (k16) or TF32 (k8),
//               FP32 accumulation. sm_80+ (the plugin does not build for older GPUs).
// Both leave the accumulator tile in shared memory (Cs); every thread then finishes a
// fixed set of its elements (noise, cast, scatter; or the weight/style reductions).
//
// Compiled by nvcc for the plugin, or as C++ on the host by the test-only emulated
// build (modulated_conv2d.cpp with -DOPS_EMULATE includes this file).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>

#ifndef OPS_EMULATE
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include "modulated_conv2d.h"

#ifndef OPS_EMULATE
using mc_dim3 = dim3;
#endif

namespace mc {

template <typename T>
MC_DEV T mc_min(T a, T b) { return a < b ? a : b; }

//----------------------------------------------------------------------------
// Cores. `mma(As, Bs, tid)` accumulates one kBK-deep slab: As[k * BM + row] (A column-major),
// Bs[k * BN + col]; `store(Cs, ldc, tid)` writes the BM x BN tile row-major to shared memory.

template <typename acc_t, int BM, int BN, int TM, int TN>
struct FmaCore {
    using smem_t = acc_t;
    static constexpr int TX = BN / TN;   // threads along columns
    static_assert((BM / TM) * (BN / TN) == kThreads, "FMA tile does not match the block size");
    acc_t acc[TM][TN];

    MC_DEV void init() {
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++)
                acc[i][j] = acc_t(0);
    }

    MC_DEV void mma(const smem_t* As, const smem_t* Bs, int tid) {
        const int ty = tid / TX, tx = tid % TX;
#pragma unroll
        for (int kk = 0; kk < kBK; kk++) {
            acc_t a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; i++)
                a[i] = As[kk * BM + ty * TM + i];
#pragma unroll
            for (int j = 0; j < TN; j++)
                b[j] = Bs[kk * BN + tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++)
                    acc[i][j] += a[i] * b[j];
        }
    }

    MC_DEV void store(acc_t* Cs, int ldc, int tid) const {
        const int ty = tid / TX, tx = tid % TX;
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++)
                Cs[(ty * TM + i) * ldc + tx * TN + j] = acc[i][j];
    }
};

// Tensor-core tile element: c10::Half / c10::BFloat16 (m16n16k16) or float (TF32, m16n16k8).
template <typename T> struct TcK;
template <> struct TcK<c10::Half> { static constexpr int value = 16; };
template <> struct TcK<c10::BFloat16> { static constexpr int value = 16; };
template <> struct TcK<float> { static constexpr int value = 8; };

#ifdef OPS_EMULATE
inline float tf32_round(float v) {   // keep 10 mantissa bits (round half up), like the TF32 conversion
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) {
        bits += 0x1000u;
        bits &= 0xffffe000u;
    }
    std::memcpy(&v, &bits, 4);
    return v;
}
#else
template <typename T> struct TcTypes;
template <> struct TcTypes<c10::Half> { using ptr_t = __half; using frag_t = __half; };
template <> struct TcTypes<c10::BFloat16> { using ptr_t = __nv_bfloat16; using frag_t = __nv_bfloat16; };
template <> struct TcTypes<float> { using ptr_t = float; using frag_t = nvcuda::wmma::precision::tf32; };
#endif

template <typename in_t, int BM, int BN>
struct TensorCore {
    using smem_t = in_t;
    static constexpr int KS = TcK<in_t>::value;
    static constexpr int WM = (BM / 16 < 8) ? BM / 16 : 8;      // warps along rows
    static constexpr int WN = 8 / WM;                            // warps along columns
    static constexpr int FM = BM / 16 / WM, FN = BN / 16 / WN;   // 16x16 fragments per warp
    static_assert(kThreads == 256 && WM * WN == 8 && FM * WM * 16 == BM && FN * WN * 16 == BN,
                  "tensor-core tile does not match 8 warps");
#ifdef OPS_EMULATE
    float c[FM][FN][16][16];   // every emulated lane computes its warp's tile; lane 0 stores it
#else
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, KS, float> c[FM][FN];
#endif

    MC_DEV void init() {
#ifdef OPS_EMULATE
        std::memset(c, 0, sizeof(c));
#else
#pragma unroll
        for (int fm = 0; fm < FM; fm++)
#pragma unroll
            for (int fn = 0; fn < FN; fn++)
                nvcuda::wmma::fill_fragment(c[fm][fn], 0.0f);
#endif
    }

    MC_DEV void mma(const smem_t* As, const smem_t* Bs, int tid) {
        const int warp = tid / 32, wm = warp / WN, wn = warp % WN;
#if defined(OPS_EMULATE)
        for (int ks = 0; ks < kBK; ks += KS)
            for (int fm = 0; fm < FM; fm++)
                for (int fn = 0; fn < FN; fn++)
                    for (int m = 0; m < 16; m++)
                        for (int n = 0; n < 16; n++) {
                            float sum = 0;
                            for (int k = ks; k < ks + KS; k++) {
                                float a = static_cast<float>(As[k * BM + (wm * FM + fm) * 16 + m]);
                                float b = static_cast<float>(Bs[k * BN + (wn * FN + fn) * 16 + n]);
                                if (std::is_same<in_t, float>::value) {
                                    a = tf32_round(a);
                                    b = tf32_round(b);
                                }
                                sum += a * b;
                            }
                            c[fm][fn][m][n] += sum;
                        }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        using namespace nvcuda;
        using ptr_t = typename TcTypes<in_t>::ptr_t;
        using frag_t = typename TcTypes<in_t>::frag_t;
#pragma unroll
        for (int ks = 0; ks < kBK; ks += KS) {
            wmma::fragment<wmma::matrix_a, 16, 16, KS, frag_t, wmma::col_major> a[FM];
            wmma::fragment<wmma::matrix_b, 16, 16, KS, frag_t, wmma::row_major> b[FN];
#pragma unroll
            for (int fm = 0; fm < FM; fm++) {
                wmma::load_matrix_sync(a[fm], reinterpret_cast<const ptr_t*>(As + ks * BM + (wm * FM + fm) * 16), BM);
                if constexpr (std::is_same<in_t, float>::value) {
#pragma unroll
                    for (int t = 0; t < a[fm].num_elements; t++)
                        a[fm].x[t] = wmma::__float_to_tf32(a[fm].x[t]);
                }
            }
#pragma unroll
            for (int fn = 0; fn < FN; fn++) {
                wmma::load_matrix_sync(b[fn], reinterpret_cast<const ptr_t*>(Bs + ks * BN + (wn * FN + fn) * 16), BN);
                if constexpr (std::is_same<in_t, float>::value) {
#pragma unroll
                    for (int t = 0; t < b[fn].num_elements; t++)
                        b[fn].x[t] = wmma::__float_to_tf32(b[fn].x[t]);
                }
            }
#pragma unroll
            for (int fm = 0; fm < FM; fm++)
#pragma unroll
                for (int fn = 0; fn < FN; fn++)
                    wmma::mma_sync(c[fm][fn], a[fm], b[fn], c[fm][fn]);
        }
#elif defined(__CUDA_ARCH__)
        __trap();   // tensor-core paths are only selected on sm_80+
#endif
    }

    MC_DEV void store(float* Cs, int ldc, int tid) const {
        const int warp = tid / 32, wm = warp / WN, wn = warp % WN;
#ifdef OPS_EMULATE
        if (tid % 32 != 0)
            return;
        for (int fm = 0; fm < FM; fm++)
            for (int fn = 0; fn < FN; fn++)
                for (int m = 0; m < 16; m++)
                    for (int n = 0; n < 16; n++)
                        Cs[((wm * FM + fm) * 16 + m) * ldc + (wn * FN + fn) * 16 + n] = c[fm][fn][m][n];
#else
#pragma unroll
        for (int fm = 0; fm < FM; fm++)
#pragma unroll
            for (int fn = 0; fn < FN; fn++)
                nvcuda::wmma::store_matrix_sync(Cs + (wm * FM + fm) * 16 * ldc + (wn * FN + fn) * 16, c[fm][fn], ldc,
                                                nvcuda::wmma::mem_row_major);
#endif
    }
};

// Shared memory of a kernel: the A/B tiles (Core::smem_t), aliased by the accumulator tile.
template <typename Core, typename acc_t, int BM, int BN>
struct Smem {
    using smem_t = typename Core::smem_t;
    static constexpr int LDC = BN + 4;   // row pitch of Cs (multiple of 4 floats for WMMA)
    static constexpr int AB = kBK * (BM + BN) * static_cast<int>(sizeof(smem_t));
    static constexpr int CB = BM * LDC * static_cast<int>(sizeof(acc_t));
    static constexpr int BYTES = AB > CB ? AB : CB;
    static_assert(BYTES <= 48 * 1024, "static shared memory limit");
    struct alignas(128) Buf {   // WMMA pointers must be 32-byte aligned
        unsigned char bytes[BYTES];
    };
};

//----------------------------------------------------------------------------
// conv: one block = BM rows (r) x BN pixels of one phase of one sample.
// Grid: x = pixel tiles (of the largest phase), y = row tiles, z = n * phases + phase.

template <typename scalar_t, typename acc_t, typename Core, int BM, int BN>
MC_GLOBAL void MC_BOUNDS conv_kernel(MC_GRID_CONST ConvParams<acc_t> p) {
    using S = Smem<Core, acc_t, BM, BN>;
    using smem_t = typename Core::smem_t;
    MC_SHARED typename S::Buf smem_buf;
    unsigned char* smem_raw = smem_buf.bytes;
    MC_SHARED int s_dy[kMaxTaps], s_dx[kMaxTaps], s_tw[kMaxTaps];
    smem_t* As = reinterpret_cast<smem_t*>(smem_raw);   // As[k][r]: modulated weight, formed on the fly
    smem_t* Bs = As + kBK * BM;                          // Bs[k][p]: implicit im2col of x
    acc_t* Cs = reinterpret_cast<acc_t*>(smem_raw);      // Cs[r][p]: result tile (after the main loop)

    const int tid = MC_TID;
    const int num_phases = p.g.num_phases;
    const int phase = MC_BID_Z % num_phases;
    const int n = MC_BID_Z / num_phases;
    const Phase& ph = p.g.ph[phase];
    const int mx = ph.mx, isy = ph.isy, isx = ph.isx;
    const int P = ph.my * mx;
    const int p0 = MC_BID_X * BN;
    const int r0 = MC_BID_Y * BM;
    if (p0 >= P)
        return;   // whole block: this phase has fewer pixels than the largest one
    const int T = ph.taps;
    const int K = p.C * T;
    for (int t = tid; t < T; t += kThreads) {
        s_dy[t] = ph.dy[t];
        s_dx[t] = ph.dx[t];
        s_tw[t] = ph.tw[t];
    }
    MC_SYNC();

    const scalar_t* x = static_cast<const scalar_t*>(p.x) + n * p.x_s[0];
    const acc_t* s = p.s + n * p.s_n;
    const acc_t* d = p.d + n * p.d_n;
    Core core;
    core.init();
    for (int k0 = 0; k0 < K; k0 += kBK) {
        // A tile: W[r, c, tw[t]] * S[n, r, c] * d[n, r, c] for k = c * T + t.
        for (int e = tid; e < BM * kBK; e += kThreads) {
            const int kk = e % kBK, rr = e / kBK;
            const int r = r0 + rr, k = k0 + kk;
            acc_t v = acc_t(0);
            if (r < p.R && k < K) {
                const int c = k / T, t = k - c * T;
                v = p.w[r * p.w_r + c * p.w_c + s_tw[t]] * s[r * p.s_r + c * p.s_c] * d[r * p.d_r + c * p.d_c];
            }
            As[kk * BM + rr] = static_cast<smem_t>(v);
        }
        // B tile: x[n, c, isy*my + dy[t], isx*mx + dx[t]], zero outside the image.
        for (int e = tid; e < kBK * BN; e += kThreads) {
            const int pp = e % BN, kk = e / BN;
            const int pix = p0 + pp, k = k0 + kk;
            acc_t v = acc_t(0);
            if (pix < P && k < K) {
                const int c = k / T, t = k - c * T;
                const int my = pix / mx, mxx = pix - my * mx;
                const int iy = isy * my + s_dy[t], ix = isx * mxx + s_dx[t];
                if (iy >= 0 && iy < p.Hin && ix >= 0 && ix < p.Win)
                    v = static_cast<acc_t>(x[c * p.x_s[1] + iy * p.x_s[2] + ix * p.x_s[3]]);
            }
            Bs[kk * BN + pp] = static_cast<smem_t>(v);
        }
        MC_SYNC();
        core.mma(As, Bs, tid);
        MC_SYNC();
    }
    core.store(Cs, S::LDC, tid);
    MC_SYNC();

    // Epilogue: optional noise, cast, scatter to the phase's output pixels.
    scalar_t* y = static_cast<scalar_t*>(p.y) + n * p.y_s[0];
    const scalar_t* noise = static_cast<const scalar_t*>(p.noise);
    for (int e = tid; e < BM * BN; e += kThreads) {
        const int rr = e / BN, pp = e % BN;
        const int r = r0 + rr, pix = p0 + pp;
        if (r >= p.R || pix >= P)
            continue;
        const int my = pix / mx, mxx = pix - my * mx;
        const int Y = ph.yb + ph.ys * my, X = ph.xb + ph.xs * mxx;
        acc_t v = Cs[rr * S::LDC + pp];
        if (noise != nullptr)
            v += static_cast<acc_t>(noise[n * p.n_s[0] + r * p.n_s[1] + Y * p.n_s[2] + X * p.n_s[3]]);
        y[r * p.y_s[1] + Y * p.y_s[2] + X * p.y_s[3]] = static_cast<scalar_t>(v);
    }
}

//----------------------------------------------------------------------------
// wgrad: one block = BM output channels x (bi input channels * taps) columns,
// looping over its samples, all phases and its pixel range. Per sample, the
// [BM x columns] tile of G is reduced in shared memory: sum_t W * G -> dSraw,
// and d * S * G is accumulated over the samples in registers -> dW.
// Grid: x = input-channel tiles, y = output-channel tiles, z = nsplit * psplit.
// Plain stores when nsplit == psplit == 1 (deterministic), atomics otherwise.

template <typename scalar_t, typename acc_t, typename Core, int BM, int BN>
MC_GLOBAL void MC_BOUNDS wgrad_kernel(MC_GRID_CONST WgradParams<acc_t> p) {
    using S = Smem<Core, acc_t, BM, BN>;
    using smem_t = typename Core::smem_t;
    constexpr int EPT = BM * BN / kThreads;   // tile elements each thread finishes
    static_assert(EPT * kThreads == BM * BN, "tile does not split evenly over the threads");
    MC_SHARED typename S::Buf smem_buf;
    unsigned char* smem_raw = smem_buf.bytes;
    MC_SHARED int s_dy[kMaxTaps], s_dx[kMaxTaps], s_tw[kMaxTaps];
    smem_t* As = reinterpret_cast<smem_t*>(smem_raw);   // As[k][o]  = gy
    smem_t* Bs = As + kBK * BM;                          // Bs[k][col] = x patches
    acc_t* Cs = reinterpret_cast<acc_t*>(smem_raw);      // Cs[o][col] = G of one sample

    const int tid = MC_TID;
    const int bi = p.bi;
    const int c_base = MC_BID_X * bi;
    const int o0 = MC_BID_Y * BM;
    const int ps = MC_BID_Z % p.psplit, ns = MC_BID_Z / p.psplit;
    const int n_per = (p.N + p.nsplit - 1) / p.nsplit;
    const int n_beg = ns * n_per, n_end = mc_min(p.N, n_beg + n_per);
    const bool atomic_dw = (p.nsplit * p.psplit > 1);
    const bool atomic_ds = (p.psplit > 1);
    const int nci = mc_min(bi, p.I - c_base);          // > 0 by construction of the grid
    const scalar_t* gy_all = static_cast<const scalar_t*>(p.gy);
    const scalar_t* x_all = static_cast<const scalar_t*>(p.x);

    for (int phase = 0; phase < p.g.num_phases; phase++) {
        const Phase& ph = p.g.ph[phase];
        const int T = ph.taps, mx = ph.mx;
        const int ncols = nci * T;
        const int P = ph.my * mx;
        const int chunk = ((P + p.psplit - 1) / p.psplit + kBK - 1) / kBK * kBK;
        const int pb = ps * chunk, pe = mc_min(P, pb + chunk);
        MC_SYNC();   // the previous phase's epilogue may still read the tap table
        for (int t = tid; t < T; t += kThreads) {
            s_dy[t] = ph.dy[t];
            s_dx[t] = ph.dx[t];
            s_tw[t] = ph.tw[t];
        }
        MC_SYNC();

        acc_t dwacc[EPT];
#pragma unroll
        for (int j = 0; j < EPT; j++)
            dwacc[j] = acc_t(0);

        for (int n = n_beg; n < n_end; n++) {
            const scalar_t* gy = gy_all + n * p.gy_s[0];
            const scalar_t* x = x_all + n * p.x_s[0];
            Core core;
            core.init();
            for (int q0 = pb; q0 < pe; q0 += kBK) {
                for (int e = tid; e < BM * kBK; e += kThreads) {
                    const int kk = e % kBK, rr = e / kBK;
                    const int o = o0 + rr, q = q0 + kk;
                    acc_t v = acc_t(0);
                    if (o < p.O && q < pe) {
                        const int my = q / mx, mxx = q - my * mx;
                        const int Y = ph.yb + ph.ys * my, X = ph.xb + ph.xs * mxx;
                        v = static_cast<acc_t>(gy[o * p.gy_s[1] + Y * p.gy_s[2] + X * p.gy_s[3]]);
                    }
                    As[kk * BM + rr] = static_cast<smem_t>(v);
                }
                for (int e = tid; e < kBK * BN; e += kThreads) {
                    const int cc = e % BN, kk = e / BN;
                    const int q = q0 + kk;
                    acc_t v = acc_t(0);
                    if (cc < ncols && q < pe) {
                        const int ci = cc / T, t = cc - ci * T;
                        const int my = q / mx, mxx = q - my * mx;
                        const int iy = ph.isy * my + s_dy[t], ix = ph.isx * mxx + s_dx[t];
                        if (iy >= 0 && iy < p.Hin && ix >= 0 && ix < p.Win)
                            v = static_cast<acc_t>(x[(c_base + ci) * p.x_s[1] + iy * p.x_s[2] + ix * p.x_s[3]]);
                    }
                    Bs[kk * BN + cc] = static_cast<smem_t>(v);
                }
                MC_SYNC();
                core.mma(As, Bs, tid);
                MC_SYNC();
            }
            core.store(Cs, S::LDC, tid);
            MC_SYNC();

            // dW contribution of sample n (the element -> thread mapping is fixed).
#pragma unroll
            for (int j = 0; j < EPT; j++) {
                const int e = tid + j * kThreads;
                const int rr = e / BN, cc = e % BN;
                const int o = o0 + rr;
                if (o < p.O && cc < ncols) {
                    const int c = c_base + cc / T;
                    dwacc[j] += p.d[n * p.d_n + o * p.d_o] * p.s[n * p.s_n + o * p.s_o + c * p.s_i] * Cs[rr * S::LDC + cc];
                }
            }
            // dSraw[n, o, c] (+)= sum_t W[o, c, tw[t]] * G[o, c, t]. The (rr, ci) -> thread
            // mapping is the same for every phase, so a plain read-modify-write is safe.
            for (int e = tid; e < BM * bi; e += kThreads) {
                const int rr = e / bi, ci = e % bi;
                const int o = o0 + rr, c = c_base + ci;
                if (o < p.O && ci < nci) {
                    const acc_t* wrow = p.w + (static_cast<int64_t>(o) * p.I + c) * p.KK;
                    acc_t sum = acc_t(0);
                    for (int t = 0; t < T; t++)
                        sum += wrow[s_tw[t]] * Cs[rr * S::LDC + ci * T + t];
                    acc_t* dst = p.dsraw + (static_cast<int64_t>(n) * p.O + o) * p.I + c;
                    if (atomic_ds)
                        MC_ATOMIC_ADD(dst, sum);
                    else
                        *dst += sum;
                }
            }
            MC_SYNC();   // Cs aliases the tiles of the next sample
        }

        // dW for this phase's taps (every tap belongs to exactly one phase).
#pragma unroll
        for (int j = 0; j < EPT; j++) {
            const int e = tid + j * kThreads;
            const int rr = e / BN, cc = e % BN;
            const int o = o0 + rr;
            if (o < p.O && cc < ncols) {
                const int ci = cc / T, t = cc - ci * T;
                acc_t* dst = p.dw + (static_cast<int64_t>(o) * p.I + c_base + ci) * p.KK + s_tw[t];
                if (atomic_dw)
                    MC_ATOMIC_ADD(dst, dwacc[j]);
                else
                    *dst = dwacc[j];
            }
        }
    }
}

//----------------------------------------------------------------------------
// Launchers.

template <typename Kernel, typename Params>
static void launch(Kernel kernel, mc_dim3 grid, const Params& p) {
#ifdef OPS_EMULATE
    cuda_emu::launch(grid, kThreads, [&]() { kernel(p); });
#else
    kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

static int max_phase_pixels(const Geom& g) {
    int m = 0;
    for (int i = 0; i < g.num_phases; i++) {
        const int P = g.ph[i].my * g.ph[i].mx;
        m = P > m ? P : m;
    }
    return m;
}

template <typename scalar_t, typename acc_t, typename Core, int BM, int BN>
static void conv_cfg(const ConvParams<acc_t>& p) {
    const int P = max_phase_pixels(p.g);
    if (P == 0 || p.R == 0 || p.N == 0)
        return;
    mc_dim3 grid;
    grid.x = static_cast<unsigned>((P + BN - 1) / BN);
    grid.y = static_cast<unsigned>((p.R + BM - 1) / BM);
    grid.z = static_cast<unsigned>(p.N * p.g.num_phases);
    launch(conv_kernel<scalar_t, acc_t, Core, BM, BN>, grid, p);
}

// tc_t: tensor-core tile element for this dtype, or void (FMA only).
template <typename scalar_t, typename acc_t, typename tc_t>
static void conv_typed(const ConvParams<acc_t>& p, int config, bool tensor_cores) {
    if (config < 0)
        config = (p.R <= 16) ? 2 : (max_phase_pixels(p.g) <= 16 ? 1 : 0);
    if constexpr (!std::is_void<tc_t>::value) {
        if (tensor_cores) {
            switch (config) {
                case 1:  conv_cfg<scalar_t, acc_t, TensorCore<tc_t, 128, 16>, 128, 16>(p); break;
                case 2:  conv_cfg<scalar_t, acc_t, TensorCore<tc_t, 16, 128>, 16, 128>(p); break;
                default: conv_cfg<scalar_t, acc_t, TensorCore<tc_t, 64, 64>, 64, 64>(p); break;
            }
            return;
        }
    }
    switch (config) {
        case 1:  conv_cfg<scalar_t, acc_t, FmaCore<acc_t, 128, 16, 8, 1>, 128, 16>(p); break;
        case 2:  conv_cfg<scalar_t, acc_t, FmaCore<acc_t, 16, 128, 1, 8>, 16, 128>(p); break;
        default: conv_cfg<scalar_t, acc_t, FmaCore<acc_t, 64, 64, 4, 4>, 64, 64>(p); break;
    }
}

template <typename scalar_t, typename acc_t, typename Core, int BM, int BN>
static void wgrad_cfg(const WgradParams<acc_t>& p) {
    if (p.O == 0 || p.I == 0)
        return;
    mc_dim3 grid;
    grid.x = static_cast<unsigned>((p.I + p.bi - 1) / p.bi);
    grid.y = static_cast<unsigned>((p.O + BM - 1) / BM);
    grid.z = static_cast<unsigned>(p.nsplit * p.psplit);
    launch(wgrad_kernel<scalar_t, acc_t, Core, BM, BN>, grid, p);
}

template <typename scalar_t, typename acc_t, typename tc_t>
static void wgrad_typed(const WgradParams<acc_t>& p, int config, bool tensor_cores) {
    if constexpr (!std::is_void<tc_t>::value) {
        if (tensor_cores) {
            if (config == 2)
                wgrad_cfg<scalar_t, acc_t, TensorCore<tc_t, 16, 128>, 16, 128>(p);
            else
                wgrad_cfg<scalar_t, acc_t, TensorCore<tc_t, 64, 64>, 64, 64>(p);
            return;
        }
    }
    if (config == 2)
        wgrad_cfg<scalar_t, acc_t, FmaCore<acc_t, 16, 128, 1, 8>, 16, 128>(p);
    else
        wgrad_cfg<scalar_t, acc_t, FmaCore<acc_t, 64, 64, 4, 4>, 64, 64>(p);
}

void conv(const ConvParams<float>& p, c10::ScalarType xtype, int config, bool tensor_cores) {
    switch (xtype) {
        case c10::ScalarType::Float:    conv_typed<float, float, float>(p, config, tensor_cores); break;
        case c10::ScalarType::Half:     conv_typed<c10::Half, float, c10::Half>(p, config, tensor_cores); break;
        case c10::ScalarType::BFloat16: conv_typed<c10::BFloat16, float, c10::BFloat16>(p, config, tensor_cores); break;
        default: break;   // rejected by the binding
    }
}

void conv(const ConvParams<double>& p, c10::ScalarType xtype, int config, bool) {
    if (xtype == c10::ScalarType::Double)
        conv_typed<double, double, void>(p, config, false);
}

void wgrad(const WgradParams<float>& p, c10::ScalarType xtype, int config, bool tensor_cores) {
    switch (xtype) {
        case c10::ScalarType::Float:    wgrad_typed<float, float, float>(p, config, tensor_cores); break;
        case c10::ScalarType::Half:     wgrad_typed<c10::Half, float, c10::Half>(p, config, tensor_cores); break;
        case c10::ScalarType::BFloat16: wgrad_typed<c10::BFloat16, float, c10::BFloat16>(p, config, tensor_cores); break;
        default: break;
    }
}

void wgrad(const WgradParams<double>& p, c10::ScalarType xtype, int config, bool) {
    if (xtype == c10::ScalarType::Double)
        wgrad_typed<double, double, void>(p, config, false);
}

} // namespace mc
