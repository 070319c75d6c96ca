// NVFP4 weight quantization on the CPU in two streaming passes (see quant/nvfp4_native.py).
//
// Byte-identical to quant/nvfp4.py (and so to nvidia-modelopt's NVFP4QTensor): the same fp32 values are
// computed in the same order; only the number of passes over memory differs.
//   nq_block_amax_*   max |x| over each block of 16 elements (exact: max involves no rounding)
//   nq_e2m1_*         q = float(x) / d[block] (IEEE fp32 division, d = float(e4m3 scale) * weight_scale_2,
//                     computed by the caller in torch), then E2M1 round-to-nearest, ties to the even code:
//                     index = #{0.25 < a} + #{0.75 <= a} + #{1.25 < a} + #{1.75 <= a} + #{2.5 < a}
//                             + #{3.5 <= a} + #{5 < a}       (a = |q|; > 6 saturates to index 7)
//                     sign = q < 0 (bit 3; -0.0 keeps code 0); element 2k in the low nibble.
// Build flags (runtime/native FLAGS): -O3 -march=native, no -ffast-math, so division and comparisons are
// IEEE and the loops vectorise. OpenMP splits the blocks over threads.
#include <cstdint>
#include <cstring>

namespace {

inline float bf16_to_f32(uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float load(const uint16_t* x, int64_t i) { return bf16_to_f32(x[i]); }
inline float load(const float* x, int64_t i) { return x[i]; }

inline uint8_t e2m1(float q) {
    const float a = q < 0.0f ? -q : q;
    uint8_t idx = static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                                       (a >= 3.5f) + (a > 5.0f));
    return static_cast<uint8_t>(idx | ((q < 0.0f) << 3));
}

// returns 1 when a NaN or an infinity was seen (the caller refuses such weights), else 0
template <typename T>
int block_amax(const T* x, int64_t nblocks, float* out, int threads) {
    int bad = 0;
#pragma omp parallel for num_threads(threads) reduction(| : bad) schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
        const T* p = x + b * 16;
        float m = 0.0f;
        int nonfinite = 0;
        for (int i = 0; i < 16; ++i) {
            float a = load(p, i);
            a = a < 0.0f ? -a : a;
            nonfinite |= !(a <= 3.4028234663852886e38f);  // NaN or inf
            m = a > m ? a : m;
        }
        out[b] = m;
        bad |= nonfinite;
    }
    return bad;
}

template <typename T>
void e2m1_pack(const T* x, const float* d, int64_t nblocks, uint8_t* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
        const T* p = x + b * 16;
        const float div = d[b];
        uint8_t* o = out + b * 8;
        for (int k = 0; k < 8; ++k) {
            const uint8_t lo = e2m1(load(p, 2 * k) / div);
            const uint8_t hi = e2m1(load(p, 2 * k + 1) / div);
            o[k] = static_cast<uint8_t>(lo | (hi << 4));
        }
    }
}

}  // namespace

extern "C" {

int nq_block_amax_bf16(const uint16_t* x, int64_t nblocks, float* out, int threads) {
    return block_amax(x, nblocks, out, threads);
}
int nq_block_amax_f32(const float* x, int64_t nblocks, float* out, int threads) {
    return block_amax(x, nblocks, out, threads);
}
void nq_e2m1_bf16(const uint16_t* x, const float* d, int64_t nblocks, uint8_t* out, int threads) {
    e2m1_pack(x, d, nblocks, out, threads);
}
void nq_e2m1_f32(const float* x, const float* d, int64_t nblocks, uint8_t* out, int threads) {
    e2m1_pack(x, d, nblocks, out, threads);
}

}  // extern "C"
