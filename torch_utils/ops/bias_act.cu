// CUDA kernel of the fused bias_act op: forward, gradient and second-order gradient.
//
// Compiled by nvcc for the plugin, or as C++ on the host by the test-only emulated build
// (bias_act.cpp with -DOPS_EMULATE includes this file; see cuda_emulation.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#ifdef OPS_EMULATE
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#endif

#include "bias_act.h"

// Arithmetic type: float for half/float storage, double for double.
template <typename T> struct OpMath { typedef float type; };
template <> struct OpMath<double> { typedef double type; };

__device__ __forceinline__ float  exp_(float v)  { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float  log1p_(float v)  { return log1pf(v); }
__device__ __forceinline__ double log1p_(double v) { return log1p(v); }
__device__ __forceinline__ float  tanh_(float v)  { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

template <typename A>
__device__ __forceinline__ A sigmoid_(A v) {
    return A(1) / (A(1) + exp_(-v));   // exp overflow -> inf -> 0
}

// act(v).
template <typename A>
__device__ __forceinline__ A act_value(int act, A v, A alpha) {
    const A selu_scale = A(1.0507009873554804934193349852946);
    const A selu_alpha = A(1.6732632423543772848170429916717);
    switch (act) {
        case kRelu:     return v > A(0) ? v : A(0);
        case kLrelu:    return v > A(0) ? v : v * alpha;
        case kTanh:     return tanh_(v);
        case kSigmoid:  return sigmoid_(v);
        case kElu:      return v > A(0) ? v : exp_(v) - A(1);
        case kSelu:     return v > A(0) ? selu_scale * v : selu_scale * selu_alpha * (exp_(v) - A(1));
        case kSoftplus: return v > A(20) ? v : log1p_(exp_(v));
        case kSwish:    return v * sigmoid_(v);
        default:        return v;
    }
}

// act'(v), from the pre-activation v or from yy = act(v) (whichever the Python side saved).
template <typename A>
__device__ __forceinline__ A act_deriv(int act, A v, A yy, A alpha) {
    const A selu_scale = A(1.0507009873554804934193349852946);
    const A selu_alpha = A(1.6732632423543772848170429916717);
    switch (act) {
        case kRelu:     return yy > A(0) ? A(1) : A(0);
        case kLrelu:    return yy > A(0) ? A(1) : alpha;
        case kTanh:     return A(1) - yy * yy;
        case kSigmoid:  return yy * (A(1) - yy);
        case kElu:      return yy > A(0) ? A(1) : yy + A(1);
        case kSelu:     return yy > A(0) ? selu_scale : yy + selu_scale * selu_alpha;
        case kSoftplus: return A(1) - exp_(-yy);
        case kSwish:    { A s = sigmoid_(v); return v < A(-80) ? A(0) : s * (A(1) + v * (A(1) - s)); }
        default:        return A(1);
    }
}

// act''(v), likewise; zero for the piecewise-linear activations.
template <typename A>
__device__ __forceinline__ A act_deriv2(int act, A v, A yy) {
    const A selu_scale = A(1.0507009873554804934193349852946);
    const A selu_alpha = A(1.6732632423543772848170429916717);
    switch (act) {
        case kTanh:     return A(-2) * yy * (A(1) - yy * yy);
        case kSigmoid:  return yy * (A(1) - yy) * (A(1) - A(2) * yy);
        case kElu:      return yy > A(0) ? A(0) : yy + A(1);
        case kSelu:     return yy > A(0) ? A(0) : yy + selu_scale * selu_alpha;
        case kSoftplus: { A c = exp_(-yy); return c * (A(1) - c); }
        case kSwish:    { A s = sigmoid_(v); return v < A(-80) ? A(0) : s * (A(1) - s) * (A(2) + v * (A(1) - A(2) * s)); }
        default:        return A(0);
    }
}

template <typename T>
__global__ void bias_act_kernel(BiasActParams p) {
    typedef typename OpMath<T>::type A;
    const T* x    = static_cast<const T*>(p.x);
    const T* b    = static_cast<const T*>(p.b);
    const T* xref = static_cast<const T*>(p.xref);
    const T* yref = static_cast<const T*>(p.yref);
    const T* dy   = static_cast<const T*>(p.dy);
    T* y          = static_cast<T*>(p.y);
    const A alpha = A(p.alpha);
    const A gain  = A(p.gain);
    const A clamp = A(p.clamp);
    const bool clamping = p.clamp >= 0;

    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.size_x; i += stride) {
        A bias = b ? A(b[(i / p.step_b) % p.size_b]) : A(0);
        A in = A(x[i]);
        A out;
        if (p.grad == 0) {
            out = act_value<A>(p.act, in + bias, alpha) * gain;
            if (clamping)   // NaN stays NaN, like torch.clamp
                out = out > clamp ? clamp : (out < -clamp ? -clamp : out);
        } else {
            A v  = (xref ? A(xref[i]) : A(0)) + bias;
            A yr = yref ? A(yref[i]) : A(0);
            A yy = gain != A(0) ? yr / gain : A(0);
            if (p.grad == 1)
                out = in * gain * act_deriv<A>(p.act, v, yy, alpha);
            else
                out = in * (dy ? A(dy[i]) : A(1)) * gain * act_deriv2<A>(p.act, v, yy);
            if (clamping && !(yr > -clamp && yr < clamp))
                out = A(0);
        }
        y[i] = T(out);
    }
}

void launch_bias_act(const BiasActParams& p, c10::ScalarType dtype) {
    const int threads = 256;
    int64_t blocks = (p.size_x + threads - 1) / threads;
    blocks = blocks < 65536 ? blocks : 65536;   // grid-stride loop covers the rest
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(dtype, "bias_act_cuda", [&] {
#ifdef OPS_EMULATE
        cuda_emu::launch(cuda_emu::Dim3{static_cast<unsigned>(blocks)}, threads, [&] { bias_act_kernel<scalar_t>(p); });
#else
        bias_act_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
#endif
    });
#ifndef OPS_EMULATE
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}
