// Python bindings and argument checks of the fused modulated convolution.
//
// Normal build (with modulated_conv2d.cu): CUDA tensors only.
// Built alone with -DOPS_EMULATE: the same kernels run on CPU tensors through
// the emulator of modulated_conv2d.h (test-only; slow).
#include <torch/extension.h>

#include <vector>

#ifdef OPS_EMULATE
#include "modulated_conv2d.cu"
#else
#include <c10/cuda/CUDAGuard.h>
#include "modulated_conv2d.h"
#endif

namespace {

using torch::Tensor;

constexpr int kConvTiles[3][2] = {{64, 64}, {128, 16}, {16, 128}};   // (rows, columns) per config

void check_device(const Tensor& t, const Tensor& ref, const char* name) {
#ifdef OPS_EMULATE
    TORCH_CHECK(t.device().is_cpu(), "modulated_conv2d (emulated): ", name, " must be a CPU tensor");
#else
    TORCH_CHECK(t.is_cuda(), "modulated_conv2d: ", name, " must be a CUDA tensor");
#endif
    TORCH_CHECK(t.device() == ref.device(), "modulated_conv2d: ", name, " is on another device");
}

c10::ScalarType acc_type(c10::ScalarType xtype) {
    return xtype == torch::kDouble ? torch::kDouble : torch::kFloat;
}

void check_x_dtype(const Tensor& t, c10::ScalarType xtype, const char* name) {
    TORCH_CHECK(xtype == torch::kFloat || xtype == torch::kHalf || xtype == torch::kBFloat16 ||
                xtype == torch::kDouble, "modulated_conv2d: x must be float16, bfloat16, float32 or float64");
    TORCH_CHECK(t.scalar_type() == xtype, "modulated_conv2d: ", name, " must have the dtype of x");
}

void check_acc(const Tensor& t, c10::ScalarType xtype, const char* name) {
    TORCH_CHECK(t.scalar_type() == acc_type(xtype), "modulated_conv2d: ", name,
                " must be float64 for float64 x and float32 otherwise");
}

// Flat geometry [num_phases, (yb, ys, my, xb, xs, mx, isy, isx, T, dy[T], dx[T], tw[T])...].
mc::Geom parse_geom(const std::vector<int64_t>& v, int Hout, int Wout, int KK) {
    mc::Geom g{};
    size_t pos = 0;
    auto next = [&]() -> int {
        TORCH_CHECK(pos < v.size(), "modulated_conv2d: truncated geometry");
        const int64_t value = v[pos++];
        TORCH_CHECK(value >= INT32_MIN && value <= INT32_MAX, "modulated_conv2d: geometry value out of range");
        return static_cast<int>(value);
    };
    g.num_phases = next();
    TORCH_CHECK(g.num_phases >= 1 && g.num_phases <= mc::kMaxPhases, "modulated_conv2d: bad number of phases");
    for (int i = 0; i < g.num_phases; i++) {
        mc::Phase& ph = g.ph[i];
        ph.yb = next(); ph.ys = next(); ph.my = next();
        ph.xb = next(); ph.xs = next(); ph.mx = next();
        ph.isy = next(); ph.isx = next(); ph.taps = next();
        TORCH_CHECK(ph.taps >= 1 && ph.taps <= mc::kMaxTaps, "modulated_conv2d: bad number of taps");
        TORCH_CHECK(ph.my >= 0 && ph.mx >= 0 && ph.ys >= 1 && ph.xs >= 1, "modulated_conv2d: bad phase grid");
        if (ph.my > 0 && ph.mx > 0)
            TORCH_CHECK(ph.yb >= 0 && ph.xb >= 0 && ph.yb + int64_t(ph.ys) * (ph.my - 1) < Hout &&
                        ph.xb + int64_t(ph.xs) * (ph.mx - 1) < Wout, "modulated_conv2d: phase grid leaves the output");
        for (int t = 0; t < ph.taps; t++) ph.dy[t] = next();
        for (int t = 0; t < ph.taps; t++) ph.dx[t] = next();
        for (int t = 0; t < ph.taps; t++) {
            ph.tw[t] = next();
            TORCH_CHECK(ph.tw[t] >= 0 && ph.tw[t] < KK, "modulated_conv2d: weight tap out of range");
        }
    }
    TORCH_CHECK(pos == v.size(), "modulated_conv2d: trailing geometry values");
    return g;
}

template <typename acc_t>
void run_conv(Tensor y, Tensor x, Tensor w, Tensor s, Tensor d, Tensor noise, const mc::Geom& g,
              int64_t mode, int64_t config, bool tensor_cores) {
    mc::ConvParams<acc_t> p{};
    const int64_t O = w.size(0), I = w.size(1), KK = w.size(2);
    p.x = x.data_ptr();
    p.y = y.data_ptr();
    p.noise = noise.numel() ? noise.data_ptr() : nullptr;
    for (int i = 0; i < 4; i++) {
        p.x_s[i] = x.stride(i);
        p.y_s[i] = y.stride(i);
        p.n_s[i] = noise.numel() ? noise.stride(i) : 0;
    }
    p.w = w.data_ptr<acc_t>();
    p.s = s.data_ptr<acc_t>();
    p.d = d.data_ptr<acc_t>();
    p.s_n = s.stride(0);
    p.d_n = d.stride(0);
    if (mode == 0) {   // rows = o, reduced channels = i
        p.w_r = I * KK; p.w_c = KK;
        p.s_r = s.stride(1); p.s_c = s.stride(2);
        p.d_r = d.stride(1); p.d_c = 0;
        p.R = static_cast<int>(O); p.C = static_cast<int>(I);
    } else {           // rows = i, reduced channels = o
        p.w_r = KK; p.w_c = I * KK;
        p.s_r = s.stride(2); p.s_c = s.stride(1);
        p.d_r = 0; p.d_c = d.stride(1);
        p.R = static_cast<int>(I); p.C = static_cast<int>(O);
    }
    p.N = static_cast<int>(x.size(0));
    p.Hin = static_cast<int>(x.size(2)); p.Win = static_cast<int>(x.size(3));
    p.Hout = static_cast<int>(y.size(2)); p.Wout = static_cast<int>(y.size(3));
    p.g = g;
    mc::conv(p, x.scalar_type(), static_cast<int>(config), tensor_cores);
}

} // namespace

// y = conv(x) with the modulated weight formed on the fly; see modulated_conv2d.h.
// tensor_cores: WMMA tiles (sm_80+), else FMA; ignored for float64.
// y [N, R, Ho, Wo] (written), x [N, C, H, W], w [O, I, KK] contiguous, s [N, O, I],
// d [N, O], noise empty or [N, R, Ho, Wo] (broadcast view); mode 0: R=O, C=I; mode 1: R=I, C=O.
void conv(Tensor y, Tensor x, Tensor w, Tensor s, Tensor d, Tensor noise, std::vector<int64_t> geom,
          int64_t mode, int64_t config, bool tensor_cores) {
    check_device(x, x, "x");
    for (auto* t : {&y, &w, &s, &d})
        check_device(*t, x, "an argument");
    const auto xtype = x.scalar_type();
    check_x_dtype(y, xtype, "y");
    check_acc(w, xtype, "weight");
    check_acc(s, xtype, "styles");
    check_acc(d, xtype, "dcoefs");
    TORCH_CHECK(mode == 0 || mode == 1, "modulated_conv2d: mode must be 0 or 1");
    TORCH_CHECK(config >= -1 && config <= 2, "modulated_conv2d: config must be -1, 0, 1 or 2");
    TORCH_CHECK(x.dim() == 4 && y.dim() == 4 && w.dim() == 3 && s.dim() == 3 && d.dim() == 2,
                "modulated_conv2d: expected x, y 4-D, w 3-D [O, I, kh*kw], s 3-D, d 2-D");
    TORCH_CHECK(w.is_contiguous(), "modulated_conv2d: w must be contiguous");
    const int64_t N = x.size(0), O = w.size(0), I = w.size(1);
    const int64_t R = mode == 0 ? O : I, C = mode == 0 ? I : O;
    TORCH_CHECK(x.size(1) == C && y.size(0) == N && y.size(1) == R, "modulated_conv2d: x/y channels do not match w");
    TORCH_CHECK(s.size(0) == N && s.size(1) == O && s.size(2) == I, "modulated_conv2d: s must be [N, O, I]");
    TORCH_CHECK(d.size(0) == N && d.size(1) == O, "modulated_conv2d: d must be [N, O]");
    if (noise.numel()) {
        check_device(noise, x, "noise");
        check_x_dtype(noise, xtype, "noise");
        TORCH_CHECK(noise.sizes() == y.sizes(), "modulated_conv2d: noise must be broadcast to the shape of y");
    }
    TORCH_CHECK(x.numel() < (int64_t(1) << 62) && y.numel() < (int64_t(1) << 62), "modulated_conv2d: too large");
    TORCH_CHECK(N < 16384 && C * mc::kMaxTaps < INT32_MAX && x.size(2) * x.size(3) < INT32_MAX &&
                y.size(2) * y.size(3) < INT32_MAX, "modulated_conv2d: sizes exceed the kernel's int32 indexing");
    const mc::Geom g = parse_geom(geom, static_cast<int>(y.size(2)), static_cast<int>(y.size(3)),
                                  static_cast<int>(w.size(2)));
    if (y.numel() == 0)
        return;
#ifndef OPS_EMULATE
    const c10::cuda::CUDAGuard guard(x.device());
#endif
    if (xtype == torch::kDouble)
        run_conv<double>(y, x, w, s, d, noise, g, mode, config, false);
    else
        run_conv<float>(y, x, w, s, d, noise, g, mode, config, tensor_cores);
}

// Gradients wrt weight and styles of the forward geometry `geom`:
// dw [O, I, KK] += sum_n d S G, dsraw [N, O, I] += sum_t W G (both zero-initialised, acc dtype).
void wgrad(Tensor dw, Tensor dsraw, Tensor gy, Tensor x, Tensor w, Tensor s, Tensor d, std::vector<int64_t> geom,
           int64_t nsplit, int64_t psplit, int64_t config, bool tensor_cores) {
    check_device(x, x, "x");
    for (auto* t : {&dw, &dsraw, &gy, &w, &s, &d})
        check_device(*t, x, "an argument");
    const auto xtype = x.scalar_type();
    check_x_dtype(gy, xtype, "gy");
    for (auto* t : {&dw, &dsraw, &w, &s, &d})
        check_acc(*t, xtype, "weight/styles/dcoefs and their gradients");
    TORCH_CHECK(x.dim() == 4 && gy.dim() == 4 && w.dim() == 3 && s.dim() == 3 && d.dim() == 2,
                "modulated_conv2d: expected x, gy 4-D, w 3-D [O, I, kh*kw], s 3-D, d 2-D");
    TORCH_CHECK(w.is_contiguous() && dw.is_contiguous() && dsraw.is_contiguous(),
                "modulated_conv2d: w, dw and dsraw must be contiguous");
    const int64_t N = x.size(0), O = w.size(0), I = w.size(1), KK = w.size(2);
    TORCH_CHECK(x.size(1) == I && gy.size(0) == N && gy.size(1) == O, "modulated_conv2d: x/gy do not match w");
    TORCH_CHECK(dw.sizes() == w.sizes(), "modulated_conv2d: dw must have the shape of w");
    TORCH_CHECK(dsraw.dim() == 3 && dsraw.size(0) == N && dsraw.size(1) == O && dsraw.size(2) == I,
                "modulated_conv2d: dsraw must be [N, O, I]");
    TORCH_CHECK(s.size(0) == N && s.size(1) == O && s.size(2) == I, "modulated_conv2d: s must be [N, O, I]");
    TORCH_CHECK(d.size(0) == N && d.size(1) == O, "modulated_conv2d: d must be [N, O]");
    TORCH_CHECK(config == -1 || config == 0 || config == 2, "modulated_conv2d: wgrad config must be -1, 0 or 2");
    TORCH_CHECK(nsplit >= 1 && psplit >= 1 && nsplit * psplit <= 65535, "modulated_conv2d: bad split");
    TORCH_CHECK(N < 16384 && I * mc::kMaxTaps < INT32_MAX && x.size(2) * x.size(3) < INT32_MAX &&
                gy.size(2) * gy.size(3) < INT32_MAX, "modulated_conv2d: sizes exceed the kernel's int32 indexing");
    const mc::Geom g = parse_geom(geom, static_cast<int>(gy.size(2)), static_cast<int>(gy.size(3)),
                                  static_cast<int>(KK));
    if (config < 0)
        config = (O <= 16) ? 2 : 0;
    const int BN = kConvTiles[config][1];
    int tmax = 1;
    for (int i = 0; i < g.num_phases; i++)
        tmax = g.ph[i].taps > tmax ? g.ph[i].taps : tmax;
    if (N == 0 || O == 0 || I == 0)
        return;
#ifndef OPS_EMULATE
    const c10::cuda::CUDAGuard guard(x.device());
#endif
    auto fill = [&](auto& p) {
        using acc_t = std::remove_pointer_t<decltype(p.dw)>;
        p.gy = gy.data_ptr();
        p.x = x.data_ptr();
        for (int i = 0; i < 4; i++) {
            p.gy_s[i] = gy.stride(i);
            p.x_s[i] = x.stride(i);
        }
        p.w = w.data_ptr<acc_t>();
        p.s = s.data_ptr<acc_t>();
        p.d = d.data_ptr<acc_t>();
        p.dw = dw.data_ptr<acc_t>();
        p.dsraw = dsraw.data_ptr<acc_t>();
        p.s_n = s.stride(0); p.s_o = s.stride(1); p.s_i = s.stride(2);
        p.d_n = d.stride(0); p.d_o = d.stride(1);
        p.N = static_cast<int>(N); p.O = static_cast<int>(O); p.I = static_cast<int>(I);
        p.KK = static_cast<int>(KK);
        p.Hin = static_cast<int>(x.size(2)); p.Win = static_cast<int>(x.size(3));
        p.Hout = static_cast<int>(gy.size(2)); p.Wout = static_cast<int>(gy.size(3));
        p.bi = BN / tmax;
        p.nsplit = static_cast<int>(nsplit);
        p.psplit = static_cast<int>(psplit);
        p.g = g;
    };
    if (xtype == torch::kDouble) {
        mc::WgradParams<double> p{};
        fill(p);
        mc::wgrad(p, xtype, static_cast<int>(config), false);
    } else {
        mc::WgradParams<float> p{};
        fill(p);
        mc::wgrad(p, xtype, static_cast<int>(config), tensor_cores);
    }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("conv", &conv, "Fused modulated convolution (forward, mode 0; input gradient, mode 1)");
    m.def("wgrad", &wgrad, "Weight and style gradients of the fused modulated convolution");
#ifdef OPS_EMULATE
    m.attr("emulated") = true;
#else
    m.attr("emulated") = false;
#endif
    m.attr("max_taps") = mc::kMaxTaps;
    m.attr("max_phases") = mc::kMaxPhases;
}
