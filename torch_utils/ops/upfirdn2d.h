// upfirdn2d (upsample, FIR filter, downsample): shared declarations of upfirdn2d.cpp and upfirdn2d.cu.
#pragma once

#include <cstdint>
#include <c10/core/ScalarType.h>

// y[n, c, oy, ox] = gain * sum_{ty, tx} u[n, c, oy * down_y + ty, ox * down_x + tx] * f'[ty, tx],
// where u is x with (up - 1) zeros after every pixel, padded by pad_x0 / pad_y0 at the start,
// and f' is f flipped in both directions unless flip_filter (true convolution by default).
struct Upfirdn2dParams {
    const void*  x;
    const float* f;
    void*        y;
    int64_t      x_stride[4];   // strides of x, in elements, for n, c, h, w
    int64_t      y_stride[4];   // strides of y
    int64_t      n, c, in_h, in_w, out_h, out_w;
    int          f_h, f_w;      // filter taps (f is a contiguous [f_h, f_w] float32 tensor)
    int          up_x, up_y, down_x, down_y;
    int64_t      pad_x0, pad_y0;
    int          flip_filter;
    float        gain;
    int          channels_last; // enumerate outputs in (n, h, w, c) order for coalescing
};

// Launches the kernel on the current CUDA stream (defined in upfirdn2d.cu).
void launch_upfirdn2d(const Upfirdn2dParams& p, c10::ScalarType dtype);
