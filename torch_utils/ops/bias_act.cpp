// Python binding and argument checks of the fused bias_act CUDA op.
//
// Normal build (with bias_act.cu): CUDA tensors only. Built alone with -DOPS_EMULATE: the same kernel runs on
// CPU tensors through the host emulator of cuda_emulation.h (test-only; slow).
#include <torch/extension.h>

#ifdef OPS_EMULATE
#include "bias_act.cu"
#define OPS_DEVICE_CHECK(t, what) TORCH_CHECK((t).is_cpu(), "bias_act (emulated): ", what, " must be a CPU tensor")
#else
#include <c10/cuda/CUDAGuard.h>
#include "bias_act.h"
#define OPS_DEVICE_CHECK(t, what) TORCH_CHECK((t).is_cuda(), "bias_act: ", what, " must be a CUDA tensor")
#endif

// Same sizes, and the same strides along every dimension longer than 1.
static bool same_layout(const torch::Tensor& a, const torch::Tensor& b) {
    if (a.sizes() != b.sizes())
        return false;
    for (int64_t i = 0; i < a.dim(); i++)
        if (a.size(i) > 1 && a.stride(i) != b.stride(i))
            return false;
    return true;
}

static void check_ref(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
    if (t.numel() == 0)
        return;
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on the device of x");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have the dtype of x");
    TORCH_CHECK(same_layout(t, x), "bias_act: ", name, " must have the shape and layout of x");
}

torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, torch::Tensor yref,
                       torch::Tensor dy, int64_t grad, int64_t dim, int64_t act,
                       double alpha, double gain, double clamp) {
    OPS_DEVICE_CHECK(x, "x");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must be dense (contiguous or channels-last)");
    TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble ||
                x.scalar_type() == torch::kHalf, "bias_act: x must be float16, float32 or float64");
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2");
    TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: unknown activation code ", act);
    TORCH_CHECK(x.numel() < (int64_t(1) << 62), "bias_act: x is too large");
    if (b.numel() > 0) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have shape [x.shape[dim]]");
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must match x in device and dtype");
        TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    }
    check_ref(xref, x, "xref");
    check_ref(yref, x, "yref");
    check_ref(dy, x, "dy");

#ifndef OPS_EMULATE
    const c10::cuda::CUDAGuard guard(x.device());
#endif
    torch::Tensor y = torch::empty_like(x);   // keeps the layout of a dense x
    TORCH_CHECK(same_layout(y, x), "bias_act: could not allocate y with the layout of x");
    if (x.numel() == 0)
        return y;

    BiasActParams p;
    p.x      = x.data_ptr();
    p.b      = b.numel() ? b.data_ptr() : nullptr;
    p.xref   = xref.numel() ? xref.data_ptr() : nullptr;
    p.yref   = yref.numel() ? yref.data_ptr() : nullptr;
    p.dy     = dy.numel() ? dy.data_ptr() : nullptr;
    p.y      = y.data_ptr();
    p.grad   = static_cast<int>(grad);
    p.act    = static_cast<int>(act);
    p.alpha  = alpha;
    p.gain   = gain;
    p.clamp  = clamp;
    p.size_x = x.numel();
    p.size_b = b.numel();
    p.step_b = b.numel() ? x.stride(dim) : 1;
    launch_bias_act(p, x.scalar_type());
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef OPS_EMULATE
    m.attr("emulated") = true;
#else
    m.attr("emulated") = false;
#endif
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp (CUDA)");
}
