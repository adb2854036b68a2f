// Python binding and argument checks of the upfirdn2d CUDA op.
//
// Normal build (with upfirdn2d.cu): CUDA tensors only. Built alone with -DOPS_EMULATE: the same kernel runs on
// CPU tensors through the host emulator of cuda_emulation.h (test-only; slow).
#include <torch/extension.h>

#ifdef OPS_EMULATE
#include "upfirdn2d.cu"
#define OPS_DEVICE_CHECK(t, what) TORCH_CHECK((t).is_cpu(), "upfirdn2d (emulated): ", what, " must be a CPU tensor")
#else
#include <c10/cuda/CUDAGuard.h>
#include "upfirdn2d.h"
#define OPS_DEVICE_CHECK(t, what) TORCH_CHECK((t).is_cuda(), "upfirdn2d: ", what, " must be a CUDA tensor")
#endif

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t up_x, int64_t up_y,
                        int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                        int64_t pad_y0, int64_t pad_y1, bool flip_filter, double gain) {
    OPS_DEVICE_CHECK(x, "x");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
    TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble ||
                x.scalar_type() == torch::kHalf, "upfirdn2d: x must be float16, float32 or float64");
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on the device of x");
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "upfirdn2d: f must be float32");
    TORCH_CHECK(f.dim() == 2 && f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must be [fh, fw]");
    TORCH_CHECK(f.numel() <= (1 << 20), "upfirdn2d: filter too large");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: factors must be >= 1");

    const int64_t n = x.size(0), c = x.size(1), in_h = x.size(2), in_w = x.size(3);
    const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - f.size(0);
    const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - f.size(1);
    TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: padded image is smaller than the filter");
    const int64_t out_h = span_h / down_y + 1;
    const int64_t out_w = span_w / down_x + 1;

#ifndef OPS_EMULATE
    const c10::cuda::CUDAGuard guard(x.device());
#endif
    torch::Tensor fc = f.contiguous();
    torch::Tensor y = torch::empty({n, c, out_h, out_w}, x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0)
        return y;

    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.f = fc.data_ptr<float>();
    p.y = y.data_ptr();
    for (int i = 0; i < 4; i++) {
        p.x_stride[i] = x.stride(i);
        p.y_stride[i] = y.stride(i);
    }
    p.n = n; p.c = c; p.in_h = in_h; p.in_w = in_w; p.out_h = out_h; p.out_w = out_w;
    p.f_h = static_cast<int>(f.size(0));
    p.f_w = static_cast<int>(f.size(1));
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = pad_x0;
    p.pad_y0 = pad_y0;
    p.flip_filter = flip_filter ? 1 : 0;
    p.gain = static_cast<float>(gain);
    p.channels_last = (y.suggest_memory_format() == at::MemoryFormat::ChannelsLast) ? 1 : 0;
    launch_upfirdn2d(p, x.scalar_type());
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef OPS_EMULATE
    m.attr("emulated") = true;
#else
    m.attr("emulated") = false;
#endif
    m.def("upfirdn2d", &upfirdn2d, "Upsample, FIR filter and downsample (CUDA)");
}
