// Fused bias + activation + gain + clamp: shared declarations of bias_act.cpp and bias_act.cu.
#pragma once

#include <cstdint>
#include <c10/core/ScalarType.h>

// Activation codes (the cuda_idx column of activation_funcs in bias_act.py).
enum BiasActKind {
    kLinear = 1, kRelu = 2, kLrelu = 3, kTanh = 4, kSigmoid = 5,
    kElu = 6, kSelu = 7, kSoftplus = 8, kSwish = 9
};

// All tensors are dense and share one layout; a null pointer means "not given".
//   grad 0: y = clamp(gain * act(x + b))
//   grad 1: y = x * gain * act'(xref + b) * [|yref| < clamp]          (x holds dy)
//   grad 2: y = x * dy * gain * act''(xref + b) * [|yref| < clamp]    (x holds d(dx))
struct BiasActParams {
    const void* x;
    const void* b;
    const void* xref;
    const void* yref;
    const void* dy;
    void*       y;
    int         grad;
    int         act;
    double      alpha;
    double      gain;
    double      clamp;      // < 0: no clamping
    int64_t     size_x;     // number of elements of x
    int64_t     size_b;     // number of elements of b (0 if none)
    int64_t     step_b;     // stride of x along the bias dimension
};

// Launches the kernel on the current CUDA stream (defined in bias_act.cu).
void launch_bias_act(const BiasActParams& p, c10::ScalarType dtype);
