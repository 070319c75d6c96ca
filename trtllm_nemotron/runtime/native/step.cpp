// Native CPU decode / verify step for Nemotron-H (fp32), called from Python through ctypes.
//
// One call runs a whole step -- embedding, every layer, final norm and LM head -- over `batch` cache rows with
// T new tokens each, with no per-op dispatch: at the embedded model's size a step is ~4 M multiply-adds, and
// the cost of a step built from framework ops is their dispatch and thread synchronisation, not the maths.
//
// The maths are those of the reference network (trtllm_nemotron/model, spec nemotron_h.md sec. 4.2-4.7), term
// by term; only the order of fp32 additions differs (and exp: a ~1 ulp polynomial). Every output element is
// computed by the same code whatever the batch, T or thread count (one dot-product routine for every row and
// column, work split by output rows), so a request gives bit-identical results alone or in a batch, and a
// T = 1 + K verification step gives the same logits as K + 1 single-token steps.
//
// Layers are described once (nt_add_mamba / _attn / _moe / _mlp, one struct per layer kind) with pointers into
// torch-owned weight and cache tensors, which the Python side keeps alive. Cache layouts are those of
// model/cache.py:
//   kv    [rows, n_kv_heads, capacity, head_dim]   conv  [rows, conv_dim, K-1]   ssm [rows, H, P, N]
//
// Every entry point checks its rows, positions and token ids against the bound caches before it writes
// (nonzero return: runtime/native/__init__.py turns it into a RuntimeStateError).
//
// Build: g++ -O3 -march=native -fopenmp-simd -pthread -shared -fPIC (runtime/native/__init__.py).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

typedef float v8 __attribute__((vector_size(32), aligned(4)));  // unaligned loads allowed (aligned(4))

int g_threads = 1;
long g_par_min = 1L << 17;  // multiply-adds from which a matvec is split over threads

// ---------------------------------------------------------------------------------------------- thread team
// The step's own worker threads. OpenMP is not used: libgomp's wait policy is a process-wide heuristic -- spin
// ~300k iterations after every parallel region, unless it counts more OpenMP threads than cores, then sleep on
// a futex at once -- and both are wrong for a server on few cores. Spinning keeps a core busy between steps
// while the serving threads (the token's consumer, the RPC threads) need it, and collapses when other
// processes share the cores: a master spinning at a barrier waits for a preempted worker (measured on a shared
// 2-core host: 100x slower steps). Sleeping pays a futex wake at each of a step's ~10-20 regions (measured: the
// same step ran at half the speed in a second thread, whose pool made libgomp count more threads than cores).
//
// Here a region is cut into chunks that threads claim from one atomic ticket (the caller claims too), so a
// worker that is asleep, preempted or late simply claims nothing: the caller never waits for a worker that
// has not started, only for chunks already running. Workers spin for the next region only while a step is
// running (`StepScope`) and for at most kSpinNs, then sleep; when a step ends they sleep at once, leaving the
// cores to the serving threads until the next step's first region wakes them. Which thread computes a chunk
// never changes a result (work is split by output rows / items). Each thread that runs steps has its own team
// (two engines stepped from two threads never share workers); a region inside a region runs serially.

constexpr long kSpinNs = 50000;        // longest spin for the next region of a running step, or a running chunk
constexpr long kChunksPerThread = 4;   // chunks per region and thread (load balance vs one atomic per chunk)
constexpr uint64_t kClosed = 0xffffffffu;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

inline long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

thread_local bool tl_in_region = false;  // inside a region (caller or worker): nested regions run serially

class Team {
 public:
  explicit Team(int workers) {
    for (int i = 0; i < workers; i++) threads_.emplace_back([this] { work(); });
  }
  ~Team() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return (int)threads_.size() + 1; }
  void set_stepping(bool on) { stepping_.store(on, std::memory_order_relaxed); }

  // fn(begin, end) over chunks covering [0, count); returns when every chunk is done.
  template <class F>
  void run(long count, F& fn) {
    const long nch = std::min(count, kChunksPerThread * size());
    call_.store([](void* c, long b, long e) { (*static_cast<F*>(c))(b, e); }, std::memory_order_relaxed);
    ctx_.store(&fn, std::memory_order_relaxed);
    count_.store(count, std::memory_order_relaxed);
    nch_.store(nch, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t g = ++gen_;
    ticket_.store(g << 32);  // seq_cst: ordered against a worker's sleepers_ increment (no lost wake-up)
    if (sleepers_.load() > 0) {
      { std::lock_guard<std::mutex> lk(mu_); }
      cv_.notify_all();
    }
    tl_in_region = true;
    long mine = 0;
    for (long c; (c = claim(g, nch)) >= 0; mine++) fn(count * c / nch, count * (c + 1) / nch);
    tl_in_region = false;
    ticket_.store((g << 32) | kClosed);  // a late worker reading the next region's fields claims nothing
    if (done_.fetch_add(mine) + mine == nch) return;
    const long t0 = now_ns();
    for (int i = 1; done_.load(std::memory_order_acquire) != nch; i++) {
      cpu_relax();
      if ((i & 63) == 0 && now_ns() - t0 > kSpinNs) {  // the worker running a chunk was preempted
        std::unique_lock<std::mutex> lk(done_mu_);
        waiting_.store(true);
        done_cv_.wait(lk, [&] { return done_.load() == nch; });
        waiting_.store(false);
        return;
      }
    }
  }

 private:
  long claim(uint64_t g, long nch) {
    uint64_t v = ticket_.load(std::memory_order_acquire);
    for (;;) {
      if ((v >> 32) != g || (long)(v & kClosed) >= nch) return -1;
      if (ticket_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) return (long)(v & kClosed);
    }
  }

  void work() {
    tl_in_region = true;
    uint64_t seen = 0;
    for (;;) {
      const long t0 = now_ns();
      for (int i = 1; (ticket_.load(std::memory_order_acquire) >> 32) == seen; i++) {
        cpu_relax();
        if ((i & 63) == 0 && (!stepping_.load(std::memory_order_relaxed) || now_ns() - t0 > kSpinNs)) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1);
          cv_.wait(lk, [&] { return (ticket_.load() >> 32) != seen || stop_.load(); });
          sleepers_.fetch_sub(1);
        }
        if (stop_.load(std::memory_order_relaxed)) return;
      }
      const uint64_t g = ticket_.load(std::memory_order_acquire) >> 32;
      seen = g;
      // the fields may already be the next region's if this one closed meanwhile: claim() then refuses
      auto call = call_.load(std::memory_order_relaxed);
      void* ctx = ctx_.load(std::memory_order_relaxed);
      const long count = count_.load(std::memory_order_relaxed), nch = nch_.load(std::memory_order_relaxed);
      for (long c; (c = claim(g, nch)) >= 0;) {
        call(ctx, count * c / nch, count * (c + 1) / nch);
        if (done_.fetch_add(1) + 1 == nch && waiting_.load()) {
          { std::lock_guard<std::mutex> lk(done_mu_); }
          done_cv_.notify_one();
        }
      }
    }
  }

  std::vector<std::thread> threads_;
  uint64_t gen_ = 0;  // the caller's region counter
  std::atomic<void (*)(void*, long, long)> call_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<long> count_{0}, nch_{0}, done_{0};
  std::atomic<uint64_t> ticket_{0};  // (region << 32) | next chunk to claim
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false}, stepping_{false}, waiting_{false};
  std::mutex mu_, done_mu_;
  std::condition_variable cv_, done_cv_;
};

thread_local std::unique_ptr<Team> tl_team;

Team& team() {
  if (!tl_team || tl_team->size() != g_threads) {
    tl_team.reset();
    tl_team.reset(new Team(g_threads - 1));
  }
  return *tl_team;
}

// Threads for a region: all of them when `big` and not already inside a region, else 1.
inline int region_threads(bool big) { return (g_threads > 1 && big && !tl_in_region) ? g_threads : 1; }

// fn(begin, end) over ranges covering [0, count), on the team when nt > 1 (else one call on this thread).
template <class F>
void parallel_ranges(int nt, long count, F&& fn) {
  if (count <= 0) return;
  if (nt <= 1 || count == 1) {
    fn(0L, count);
    return;
  }
  team().run(count, fn);
}

// fn(i) for i in [0, count).
template <class F>
void parallel_for(int nt, long count, F&& fn) {
  parallel_ranges(nt, count, [&](long b, long e) {
    for (long i = b; i < e; i++) fn(i);
  });
}

// The extent of one entry point: the team's workers spin between its regions and sleep after it.
struct StepScope {
  StepScope() {
    if (g_threads > 1) team().set_stepping(true);
  }
  ~StepScope() {
    if (tl_team) tl_team->set_stepping(false);
  }
};

// The horizontal sums of four accumulators at once: a pairwise tree, the same additions for every row
// (rows a caller does not have are zero vectors), so R = 1 and R = 4 give the same bits.
inline void hsum4(v8 a0, v8 a1, v8 a2, v8 a3, float* out, int R) {
  v8 t0 = __builtin_shufflevector(a0, a1, 0, 2, 8, 10, 4, 6, 12, 14) +
          __builtin_shufflevector(a0, a1, 1, 3, 9, 11, 5, 7, 13, 15);
  v8 t1 = __builtin_shufflevector(a2, a3, 0, 2, 8, 10, 4, 6, 12, 14) +
          __builtin_shufflevector(a2, a3, 1, 3, 9, 11, 5, 7, 13, 15);
  v8 t2 = __builtin_shufflevector(t0, t1, 0, 2, 8, 10, 4, 6, 12, 14) +
          __builtin_shufflevector(t0, t1, 1, 3, 9, 11, 5, 7, 13, 15);
  // t2 = [r0 lo, r1 lo, r2 lo, r3 lo, r0 hi, r1 hi, r2 hi, r3 hi]
  for (int r = 0; r < R; r++) out[r] = t2[r] + t2[r + 4];
}

// The dot-product kernel of this file: 4 rows times one column. Each output (row r) is two 8-wide
// accumulators, over the even and the odd 8-column halves of each 16-column chunk (a zero-padded last chunk),
// summed, then the hsum4 tree: every output of every matvec, plain or packed, whatever the batch, T or
// thread split, is computed by these same additions in the same order. Eight accumulator chains keep both
// FMA pipes busy for a single column (the decode step is bound by streaming weights through one column);
// the accumulators are written out by hand (an array of them indexed in a loop is spilled by the compiler,
// 4x slower), and a 4x2 variant with one accumulator per output measured slower on both T = 1 and T = 4.
// Weights are float32, or bfloat16 when every value of the matrix is exactly a bfloat16 (the checkpoint's
// own precision, upcast at load): widening bf16 -> fp32 is exact, so the products and sums are the same
// floats either way, from half the bytes (a decode step streams its weights: 1.16x at batch 1 on the
// bandwidth-bound 192M benchmark model, measured interleaved; the caller enables it for big models only).
typedef unsigned short vh8 __attribute__((vector_size(16), aligned(2)));
typedef unsigned int vu8 __attribute__((vector_size(32)));
typedef uint16_t bf16;

inline v8 ldw(const float* p) { return *(const v8*)p; }
inline v8 ldw(const bf16* p) {
  vu8 u = __builtin_convertvector(*(const vh8*)p, vu8) << 16;
  v8 f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
// the first n (<= 8; none if n <= 0) values at p, zero-padded to 8 floats
template <typename WT>
inline v8 ldw_tail(const WT* p, int n) {
  WT t[8] = {0};
  if (n > 0) std::memcpy(t, p, sizeof(WT) * std::min(n, 8));
  return ldw(t);
}

// w0..w3: the rows' first chunks; `wstep` elements between a row's consecutive 16-column chunks (16 for plain
// rows, 64 for packed blocks where the 4 rows' chunks are interleaved).
template <typename WT>
inline void kern4(const WT* w0, const WT* w1, const WT* w2, const WT* w3, int wstep, const float* x, int in,
                  float* out) {
  v8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  int i = 0;
  for (; i + 16 <= in; i += 16, w0 += wstep, w1 += wstep, w2 += wstep, w3 += wstep) {
    v8 x0 = *(const v8*)(x + i), x1 = *(const v8*)(x + i + 8);
    a0 += ldw(w0) * x0;
    b0 += ldw(w0 + 8) * x1;
    a1 += ldw(w1) * x0;
    b1 += ldw(w1 + 8) * x1;
    a2 += ldw(w2) * x0;
    b2 += ldw(w2 + 8) * x1;
    a3 += ldw(w3) * x0;
    b3 += ldw(w3 + 8) * x1;
  }
  if (i < in) {
    const int r = in - i;
    v8 x0 = ldw_tail(x + i, r), x1 = ldw_tail(x + i + 8, r - 8);
    a0 += ldw_tail(w0, r) * x0;
    b0 += ldw_tail(w0 + 8, r - 8) * x1;
    a1 += ldw_tail(w1, r) * x0;
    b1 += ldw_tail(w1 + 8, r - 8) * x1;
    a2 += ldw_tail(w2, r) * x0;
    b2 += ldw_tail(w2 + 8, r - 8) * x1;
    a3 += ldw_tail(w3, r) * x0;
    b3 += ldw_tail(w3 + 8, r - 8) * x1;
  }
  hsum4(a0 + b0, a1 + b1, a2 + b2, a3 + b3, out, 4);
}

// Rows o0..o0+nrows-1 (nrows <= 4; a short block repeats its last row, whose extra results are dropped)
// for ncol columns.
template <typename WT>
inline void block_cols(const WT* w0, const WT* w1, const WT* w2, const WT* w3, int wstep, int in, const float* X,
                       long ldx, int ncol, float* Y, long ldy, int o0, int nrows, const float* b) {
  float s[4];
  for (int c = 0; c < ncol; c++) {
    kern4(w0, w1, w2, w3, wstep, X + c * ldx, in, s);
    for (int r = 0; r < nrows; r++) Y[c * ldy + o0 + r] = b ? s[r] + b[o0 + r] : s[r];
  }
}

inline long packed_size(int out, int in) { return (long)((out + 3) / 4) * 4 * ((in + 15) / 16) * 16; }

// W [out, in] row-major -> blocks of 4 rows, each chunk of 16 columns stored as the 4 rows' 16 values (zero
// padded to whole blocks and chunks): a block is read as one sequential stream, +50 % bandwidth on small
// expert matrices whose 4 short row streams the hardware prefetcher follows badly (measured).
template <typename WT>
void pack4(const float* W, int out, int in, WT* P) {
  const int chunks = (in + 15) / 16;
  std::memset(P, 0, sizeof(WT) * packed_size(out, in));
  for (int o = 0; o < out; o++) {
    WT* blk = P + (long)(o / 4) * 4 * chunks * 16;
    for (int i = 0; i < in; i++) {
      float v = W[(long)o * in + i];
      WT& dst = blk[(i / 16) * 64 + (o % 4) * 16 + i % 16];
      if constexpr (sizeof(WT) == 4) {
        dst = v;
      } else {
        uint32_t u;
        std::memcpy(&u, &v, 4);
        dst = (WT)(u >> 16);
      }
    }
  }
}

// A weight matrix [out, in]: the float32 tensor, and its exact bfloat16 copy when every value is a bfloat16.
struct Mat {
  const float* f = nullptr;
  std::vector<bf16> h;
  int out = 0, in = 0;
  explicit operator bool() const { return f != nullptr; }
  long bytes() const { return (long)out * in * (h.empty() ? 4 : 2); }
};

bool exactly_bf16(const float* p, long n) {
  for (long i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    if (u & 0xffffu) return false;
  }
  return true;
}

Mat make_mat(const float* p, int out, int in, bool allow_bf16) {
  Mat m;
  m.f = p, m.out = out, m.in = in;
  if (p && allow_bf16 && exactly_bf16(p, (long)out * in)) {
    m.h.resize((size_t)out * in);
    for (long i = 0; i < (long)out * in; i++) {
      uint32_t u;
      std::memcpy(&u, p + i, 4);
      m.h[i] = (bf16)(u >> 16);
    }
  }
  return m;
}


// Y[c*ldy + o] = W[o] . X[c*ldx] (+ b[o]) for rows o in [o0, o1), columns c in [0, ncol).
template <typename WT>
void matvec_range(const WT* W, const float* b, int in, const float* X, long ldx, int ncol, float* Y, long ldy,
                  int o0, int o1) {
  for (int o = o0; o < o1; o += 4) {
    const int nr = std::min(4, o1 - o);
    const WT* w0 = W + (long)o * in;
    const WT* w1 = W + (long)(o + std::min(1, nr - 1)) * in;
    const WT* w2 = W + (long)(o + std::min(2, nr - 1)) * in;
    const WT* w3 = W + (long)(o + std::min(3, nr - 1)) * in;
    block_cols(w0, w1, w2, w3, 16, in, X, ldx, ncol, Y, ldy, o, nr, b);
  }
}

// bf16 rows -> float32 (exact)
inline void widen(const bf16* src, long n, float* dst) {
  for (long i = 0; i < n; i++) {
    uint32_t u = (uint32_t)src[i] << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

void matvec_range(const Mat& W, const float* b, const float* X, long ldx, int ncol, float* Y, long ldy, int o0,
                  int o1) {
  if (W.h.empty()) {
    matvec_range(W.f, b, W.in, X, ldx, ncol, Y, ldy, o0, o1);
  } else if (ncol == 1) {
    matvec_range(W.h.data(), b, W.in, X, ldx, ncol, Y, ldy, o0, o1);
  } else {
    // several columns: widen each block of 4 rows once (into L1), then the float kernel for every column
    // (the same floats, so the same results as the ncol == 1 path)
    thread_local std::vector<float> blk;
    const int in = W.in;
    if (blk.size() < (size_t)4 * in) blk.resize((size_t)4 * in);
    for (int o = o0; o < o1; o += 4) {
      const int nr = std::min(4, o1 - o);
      widen(W.h.data() + (long)o * in, (long)nr * in, blk.data());
      matvec_range(blk.data(), b ? b + o : nullptr, in, X, ldx, ncol, Y + o, ldy, 0, nr);
    }
  }
}

// Y [ncol, out] = X [ncol, in] @ W^T for a packed W, single-threaded (called per expert). A bf16 block read
// for several columns is widened once first (as in matvec_range).
template <typename WT>
void matvec_packed(const WT* P, int out, int in, const float* X, long ldx, int ncol, float* Y, long ldy) {
  const long blk = (long)4 * ((in + 15) / 16) * 16;
  thread_local std::vector<float> wide;
  for (int o = 0; o < out; o += 4) {
    const WT* w = P + (long)(o / 4) * blk;
    if constexpr (sizeof(WT) == 2) {
      if (ncol > 1) {
        if (wide.size() < (size_t)blk) wide.resize(blk);
        widen(w, blk, wide.data());
        const float* f = wide.data();
        block_cols(f, f + 16, f + 32, f + 48, 64, in, X, ldx, ncol, Y, ldy, o, std::min(4, out - o), nullptr);
        continue;
      }
    }
    block_cols(w, w + 16, w + 32, w + 48, 64, in, X, ldx, ncol, Y, ldy, o, std::min(4, out - o), nullptr);
  }
}

// Y [ncol, out] = X [ncol, in] @ W[out, in]^T (+ b), split over threads by blocks of 4 output rows.
void matvec(const Mat& W, const float* b, const float* X, long ldx, int ncol, float* Y, long ldy) {
  const int out = W.out;
  long work = (long)out * W.in * ncol;
  int nt = region_threads(work >= g_par_min);
  if (nt == 1) {
    matvec_range(W, b, X, ldx, ncol, Y, ldy, 0, out);
    return;
  }
  int nb = (out + 3) / 4;
  parallel_ranges(nt, nb, [&](long b0, long b1) {
    matvec_range(W, b, X, ldx, ncol, Y, ldy, (int)b0 * 4, std::min(out, (int)b1 * 4));
  });
}

typedef int vi8 __attribute__((vector_size(32)));

// exp of 8 floats: Cephes expf (range reduction by ln 2, degree-6 polynomial, 2^n through the exponent bits),
// ~1 ulp. Inputs are clamped to [-87.3, 88.3] (results stay finite; exp(-87.3) = 1.2e-38 stands for 0).
inline v8 exp8(v8 x) {
  x = x < -87.3f ? v8{} - 87.3f : x;
  x = x > 88.3f ? v8{} + 88.3f : x;
  const v8 magic = v8{} + 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  v8 n = (x * 1.44269504088896341f + magic) - magic;
  v8 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v8 p = v8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  v8 y = p * r * r + r + 1.f;
  vi8 bits = (__builtin_convertvector(n, vi8) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// in place over n floats (a zero-padded tail block): x -> exp(x), x -> silu(x) = x / (1 + exp(-x))
inline void exp_inplace(float* x, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8) *(v8*)(x + i) = exp8(*(const v8*)(x + i));
  if (i < n) {
    v8 t = exp8(ldw_tail(x + i, (int)(n - i)));
    std::memcpy(x + i, &t, sizeof(float) * (n - i));
  }
}

inline void silu_inplace(float* x, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 v = *(const v8*)(x + i);
    *(v8*)(x + i) = v / (1.f + exp8(-v));
  }
  if (i < n) {
    v8 v = ldw_tail(x + i, (int)(n - i));
    v8 t = v / (1.f + exp8(-v));
    std::memcpy(x + i, &t, sizeof(float) * (n - i));
  }
}

inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }  // torch: beta 1, threshold 20
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// y = w * x * rsqrt(mean(x^2) + eps) over `d` channels
void rms_norm(const float* x, const float* w, int d, float eps, float* y) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int i = 0; i < d; i++) ss += x[i] * x[i];
  float r = 1.f / std::sqrt(ss / d + eps);
  for (int i = 0; i < d; i++) y[i] = w[i] * (x[i] * r);
}

enum Kind { MAMBA = 0, ATTN = 1, MOE = 2, MLP = 3 };

struct Layer {
  int kind;
  const float* norm_w;
  float eps;
  // Mamba
  int H, P, G, N, K, d_inner, conv_dim, group;
  bool has_dt_min;
  float dt_min;
  Mat in_w, out_w;
  const float *in_b, *conv_w, *conv_b, *A_log, *D, *dt_bias, *gnorm_w, *out_b;
  float *conv_state, *ssm_state;
  std::vector<float> rec_window, rec_states;  // record mode: [batch, C, K-1+T], [batch, T, H, P, N]
  int rec_batch = 0, rec_T = 0;
  // attention
  int nh, nkv, hd, cap;
  Mat q_w, k_w, v_w, o_w;
  const float *q_b, *k_b, *v_b, *o_b;
  float *kc, *vc;
  // MoE (experts stacked: up [E, F, X], down [E, X, F]); dense MLP uses up/down + biases with F
  int E, F, X, top_k, n_group, topk_group, shF;
  bool norm_topk;
  float scale;
  Mat gate, fc1, fc2, sh_up, sh_down, up, down;  // up / down: the dense MLP
  const float *bias, *up_b, *down_b;
  // MoE experts (stacks up [E, F, X], down [E, X, F]) in pack4 layout, one block of packed_size each, in
  // bfloat16 when every expert weight is one, else float32 (the other vector stays empty)
  std::vector<float> up_packed, down_packed;
  std::vector<bf16> up_packed_h, down_packed_h;
};

struct Model {
  int hidden, vocab;
  float eps;
  const float *embed, *norm_f;
  Mat lm_head;
  // MTP block
  const float *enorm, *hnorm, *final_norm;
  Mat eh_proj;
  bool allow_bf16 = true;
  // the bound caches: rows and positions per row (backbone; MTP), for the argument checks
  long rows = 0, cap = 0, mtp_rows = 0, mtp_cap = 0;
  float mtp_eps;
  std::vector<Layer> stacks[2];  // 0: backbone, 1: MTP block
  std::vector<float> buf_h, buf_x, buf_a, buf_b, buf_c, buf_d, buf_e, buf_g;
};

float* grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// ---------------------------------------------------------------------------------------------- attention
void attention(Model& m, Layer& L, const float* x, float* h, const int64_t* rows, const int64_t* start,
               int batch, int T) {
  const int n = batch * T, hid = m.hidden, nh = L.nh, nkv = L.nkv, hd = L.hd;
  float* q = grow(m.buf_a, (size_t)n * nh * hd);
  float* k = grow(m.buf_b, (size_t)n * nkv * hd);
  float* v = grow(m.buf_c, (size_t)n * nkv * hd);
  float* o = grow(m.buf_d, (size_t)n * nh * hd);
  matvec(L.q_w, L.q_b, x, hid, n, q, nh * hd);
  matvec(L.k_w, L.k_b, x, hid, n, k, nkv * hd);
  matvec(L.v_w, L.v_b, x, hid, n, v, nkv * hd);
  const long row_stride = (long)nkv * L.cap * hd;
  for (int b = 0; b < batch; b++)
    for (int t = 0; t < T; t++) {
      long pos = start[b] + t;
      for (int g = 0; g < nkv; g++) {
        long off = rows[b] * row_stride + ((long)g * L.cap + pos) * hd;
        std::memcpy(L.kc + off, k + ((long)(b * T + t) * nkv + g) * hd, sizeof(float) * hd);
        std::memcpy(L.vc + off, v + ((long)(b * T + t) * nkv + g) * hd, sizeof(float) * hd);
      }
    }
  const float scale = 1.f / std::sqrt((float)hd);
  const int rep = nh / nkv;
  long maxctx = 0;
  for (int b = 0; b < batch; b++) maxctx = std::max(maxctx, (long)start[b] + T);
  long work = (long)n * nh * maxctx * hd * 2;
  parallel_for(region_threads(work >= g_par_min), (long)n * nh, [&](long item) {
      int bt = (int)(item / nh), hh = (int)(item % nh);
      int b = bt / T, t = bt % T;
      long len = start[b] + t + 1;  // causal: positions 0..pos
      int g = hh / rep;
      const float* qv = q + ((long)bt * nh + hh) * hd;
      const float* kbase = L.kc + rows[b] * row_stride + (long)g * L.cap * hd;
      const float* vbase = L.vc + rows[b] * row_stride + (long)g * L.cap * hd;
      std::vector<float> sc(len);
      float mx = -std::numeric_limits<float>::infinity();
      for (long p = 0; p < len; p++) {
        const float* kv = kbase + p * hd;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < hd; i++) s += qv[i] * kv[i];
        sc[p] = s * scale;
        mx = std::max(mx, sc[p]);
      }
      for (long p = 0; p < len; p++) sc[p] -= mx;
      exp_inplace(sc.data(), len);
      float den = 0.f;
      for (long p = 0; p < len; p++) den += sc[p];
      float* ov = o + ((long)bt * nh + hh) * hd;
      for (int i = 0; i < hd; i++) ov[i] = 0.f;
      for (long p = 0; p < len; p++) {
        const float* vv = vbase + p * hd;
        float w = sc[p] / den;
        for (int i = 0; i < hd; i++) ov[i] += w * vv[i];
      }
    });
  float* y = grow(m.buf_e, (size_t)n * hid);
  matvec(L.o_w, L.o_b, o, nh * hd, n, y, hid);
  for (long i = 0; i < (long)n * hid; i++) h[i] += y[i];
}

// ---------------------------------------------------------------------------------------------- Mamba-2
void mamba(Model& m, Layer& L, const float* x, float* h, const int64_t* rows, int batch, int T, bool record) {
  const int n = batch * T, hid = m.hidden;
  const int H = L.H, P = L.P, G = L.G, N = L.N, K = L.K, di = L.d_inner, C = L.conv_dim;
  const int in_out = di + C + H, W = K - 1 + T, hpg = H / G;
  float* zxd = grow(m.buf_a, (size_t)n * in_out);
  matvec(L.in_w, L.in_b, x, hid, n, zxd, in_out);
  float* y = grow(m.buf_b, (size_t)n * di);
  float* xc = grow(m.buf_c, (size_t)n * C);
  if (record) {
    L.rec_window.resize((size_t)batch * C * W);
    L.rec_states.resize((size_t)batch * T * H * P * N);
    L.rec_batch = batch;
    L.rec_T = T;
  }
  const long srow = (long)H * P * N, crow = (long)C * (K - 1);
  // rows are independent: several rows run in parallel (each row's tokens in order), one row splits its heads
  const int row_threads = region_threads(batch > 1 && (long)n * (srow + C * K) >= (1L << 15));
  parallel_for(row_threads, batch, [&](long bl) {
    const int b = (int)bl;
    // conv window [C, K-1+T]: cached K-1 columns, then this step's xBC
    thread_local std::vector<float> win_local;
    float* win = record ? L.rec_window.data() + (long)b * C * W : (win_local.resize((size_t)C * W), win_local.data());
    const float* cs = L.conv_state + rows[b] * crow;
    for (int c = 0; c < C; c++) {
      for (int j = 0; j < K - 1; j++) win[c * W + j] = cs[c * (K - 1) + j];
      for (int t = 0; t < T; t++) win[c * W + K - 1 + t] = zxd[(long)(b * T + t) * in_out + di + c];
    }
    for (int t = 0; t < T; t++) {
      float* o = xc + (long)(b * T + t) * C;
      for (int c = 0; c < C; c++) {
        float s = 0.f;
        for (int j = 0; j < K; j++) s += win[c * W + t + j] * L.conv_w[c * K + j];
        if (L.conv_b) s += L.conv_b[c];
        o[c] = s;
      }
      silu_inplace(o, C);
    }
    float* state = L.ssm_state + rows[b] * srow;
    std::vector<float> st_copy;
    if (record) {
      st_copy.assign(state, state + srow);
      state = st_copy.data();
    }
    for (int t = 0; t < T; t++) {
      const float* xt = xc + (long)(b * T + t) * C;  // x [di], B [G*N], C [G*N]
      const float* dtr = zxd + (long)(b * T + t) * in_out + di + C;
      float* yt = y + (long)(b * T + t) * di;
      parallel_for(region_threads(srow >= (1L << 16)), H, [&](long hl) {
        const int hh = (int)hl;
        float d = softplus(dtr[hh] + L.dt_bias[hh]);
        if (L.has_dt_min) d = std::max(d, L.dt_min);
        float dA = std::exp(d * -std::exp(L.A_log[hh]));
        int g = hh / hpg;
        const float* Bv = xt + di + g * N;
        const float* Cv = xt + di + G * N + g * N;
        for (int p = 0; p < P; p++) {
          float xv = xt[hh * P + p];
          float dx = d * xv;
          float* s = state + ((long)hh * P + p) * N;
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int k = 0; k < N; k++) {
            s[k] = s[k] * dA + dx * Bv[k];
            acc += s[k] * Cv[k];
          }
          yt[hh * P + p] = acc + L.D[hh] * xv;
        }
      });
      if (record) std::memcpy(L.rec_states.data() + ((long)b * T + t) * srow, state, sizeof(float) * srow);
    }
    if (!record) {
      float* csw = L.conv_state + rows[b] * crow;
      for (int c = 0; c < C; c++)
        for (int j = 0; j < K - 1; j++) csw[c * (K - 1) + j] = win[c * W + T + j];
    }
  });
  // gated RMS norm (norm_before_gate = False): u = y * silu(z), normalised per group of `group` channels
  const int norm_threads = region_threads(n > 1 && (long)n * di >= (1L << 13));
  parallel_for(norm_threads, n, [&](long i) {
    float* yi = y + (long)i * di;
    const float* z = zxd + (long)i * in_out;
    thread_local std::vector<float> gate_buf;
    gate_buf.resize(di);
    float* sz = gate_buf.data();
    std::memcpy(sz, z, sizeof(float) * di);
    silu_inplace(sz, di);
    for (int c = 0; c < di; c++) yi[c] *= sz[c];
    for (int g0 = 0; g0 < di; g0 += L.group) {
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int c = g0; c < g0 + L.group; c++) ss += yi[c] * yi[c];
      float r = 1.f / std::sqrt(ss / L.group + L.eps);
      for (int c = g0; c < g0 + L.group; c++) yi[c] = L.gnorm_w[c] * (yi[c] * r);
    }
  });
  float* out = grow(m.buf_d, (size_t)n * hid);
  matvec(L.out_w, L.out_b, y, di, n, out, hid);
  for (long i = 0; i < (long)n * hid; i++) h[i] += out[i];
}

// ---------------------------------------------------------------------------------------------- MoE
// DeepSeek-V3 noaux_tc routing (spec sec. 4.4): logits [E] -> idx [k] (descending choice), weights [k].
void route(const Layer& L, const float* logits, int* idx, float* wts) {
  const int E = L.E, k = L.top_k;
  float scores[1024], choice[1024];
  for (int e = 0; e < E; e++) {
    scores[e] = sigmoid(logits[e]);
    choice[e] = scores[e] + L.bias[e];
  }
  if (L.n_group > 1) {
    const int per = E / L.n_group;
    float gs[256];
    for (int g = 0; g < L.n_group; g++) {
      float a = -INFINITY, b2 = -INFINITY;
      for (int e = g * per; e < (g + 1) * per; e++) {
        float c = choice[e];
        if (c > a) {
          b2 = a;
          a = c;
        } else if (c > b2) {
          b2 = c;
        }
      }
      gs[g] = a + b2;
    }
    bool keep[256] = {false};
    for (int r = 0; r < L.topk_group; r++) {
      int best = -1;
      for (int g = 0; g < L.n_group; g++)
        if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
      keep[best] = true;
    }
    for (int e = 0; e < E; e++)
      if (!keep[e / per]) choice[e] = -INFINITY;
  }
  bool taken[1024] = {false};
  for (int r = 0; r < k; r++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (!taken[e] && (best < 0 || choice[e] > choice[best])) best = e;
    taken[best] = true;
    idx[r] = best;
    wts[r] = scores[best];
  }
  if (L.norm_topk) {
    float s = 0.f;
    for (int r = 0; r < k; r++) s += wts[r];
    for (int r = 0; r < k; r++) wts[r] = wts[r] / (s + 1e-20f);
  }
  for (int r = 0; r < k; r++) wts[r] *= L.scale;
}

void moe(Model& m, Layer& L, const float* x, float* h, int n) {
  const int hid = m.hidden, E = L.E, F = L.F, X = L.X, k = L.top_k;
  float* logits = grow(m.buf_a, (size_t)n * E);
  matvec(L.gate, nullptr, x, hid, n, logits, E);
  std::vector<int> idx((size_t)n * k);
  std::vector<float> wts((size_t)n * k);
  for (int i = 0; i < n; i++) route(L, logits + (long)i * E, idx.data() + (long)i * k, wts.data() + (long)i * k);
  const float* r = x;
  if (L.fc1) {
    float* rl = grow(m.buf_b, (size_t)n * X);
    matvec(L.fc1, nullptr, x, hid, n, rl, X);
    r = rl;
  }
  // group the (token, slot) pairs by expert; each expert's rows run as one multi-column matvec
  std::vector<int> count(E + 1, 0), offs(E + 1, 0), order((size_t)n * k);
  for (int p = 0; p < n * k; p++) count[idx[p]]++;
  for (int e = 0; e < E; e++) offs[e + 1] = offs[e] + count[e];
  {
    std::vector<int> fill(offs.begin(), offs.end() - 1);
    for (int p = 0; p < n * k; p++) order[fill[idx[p]]++] = p;
  }
  std::vector<int> active;
  for (int e = 0; e < E; e++)
    if (count[e]) active.push_back(e);
  float* xin = grow(m.buf_c, (size_t)n * k * X);   // gathered inputs, grouped by expert
  float* hmid = grow(m.buf_d, (size_t)n * k * F);  // expert hidden
  float* yexp = grow(m.buf_e, (size_t)n * k * X);  // expert outputs, grouped by expert
  for (int p = 0; p < n * k; p++) std::memcpy(xin + (long)p * X, r + (long)(order[p] / k) * X, sizeof(float) * X);
  long work = (long)n * k * F * X * 2;
  int nt = region_threads(work >= g_par_min && (int)active.size() > 1);
  parallel_for(nt, (long)active.size(), [&](long a) {
    int e = active[a], o = offs[e], c = count[e];
    if (L.up_packed_h.empty())
      matvec_packed(L.up_packed.data() + e * packed_size(F, X), F, X, xin + (long)o * X, X, c, hmid + (long)o * F, F);
    else
      matvec_packed(L.up_packed_h.data() + e * packed_size(F, X), F, X, xin + (long)o * X, X, c, hmid + (long)o * F,
                    F);
    for (long i = (long)o * F; i < (long)(o + c) * F; i++) {
      float v = hmid[i] > 0.f ? hmid[i] : 0.f;
      hmid[i] = v * v;
    }
    if (L.down_packed_h.empty())
      matvec_packed(L.down_packed.data() + e * packed_size(X, F), X, F, hmid + (long)o * F, F, c, yexp + (long)o * X,
                    X);
    else
      matvec_packed(L.down_packed_h.data() + e * packed_size(X, F), X, F, hmid + (long)o * F, F, c,
                    yexp + (long)o * X, X);
  });
  std::vector<int> where((size_t)n * k);
  for (int q = 0; q < n * k; q++) where[order[q]] = q;
  std::vector<float> routed((size_t)n * X, 0.f);
  for (int i = 0; i < n; i++) {
    float* ri = routed.data() + (long)i * X;
    for (int j = 0; j < k; j++) {
      const float* yv = yexp + (long)where[i * k + j] * X;
      float w = wts[(long)i * k + j];
      for (int c = 0; c < X; c++) ri[c] += yv[c] * w;
    }
  }
  float* out = grow(m.buf_g, (size_t)n * hid);
  if (L.fc2)
    matvec(L.fc2, nullptr, routed.data(), X, n, out, hid);
  else
    std::memcpy(out, routed.data(), sizeof(float) * n * hid);
  if (L.sh_up) {
    float* s1 = grow(m.buf_c, (size_t)n * L.shF);
    matvec(L.sh_up, nullptr, x, hid, n, s1, L.shF);
    for (long i = 0; i < (long)n * L.shF; i++) {
      float v = s1[i] > 0.f ? s1[i] : 0.f;
      s1[i] = v * v;
    }
    float* s2 = grow(m.buf_d, (size_t)n * hid);
    matvec(L.sh_down, nullptr, s1, L.shF, n, s2, hid);
    for (long i = 0; i < (long)n * hid; i++) out[i] += s2[i];
  }
  for (long i = 0; i < (long)n * hid; i++) h[i] += out[i];
}

void mlp(Model& m, Layer& L, const float* x, float* h, int n) {
  const int hid = m.hidden, F = L.F;
  float* a = grow(m.buf_a, (size_t)n * F);
  matvec(L.up, L.up_b, x, hid, n, a, F);
  for (long i = 0; i < (long)n * F; i++) {
    float v = a[i] > 0.f ? a[i] : 0.f;
    a[i] = v * v;
  }
  float* y = grow(m.buf_b, (size_t)n * hid);
  matvec(L.down, L.down_b, a, F, n, y, hid);
  for (long i = 0; i < (long)n * hid; i++) h[i] += y[i];
}

void run_layers(Model& m, int stack, float* h, const int64_t* rows, const int64_t* start, int batch, int T,
                bool record) {
  const int n = batch * T, hid = m.hidden;
  float* x = grow(m.buf_x, (size_t)n * hid);
  for (Layer& L : m.stacks[stack]) {
    for (int i = 0; i < n; i++) rms_norm(h + (long)i * hid, L.norm_w, hid, L.eps, x + (long)i * hid);
    switch (L.kind) {
      case ATTN: attention(m, L, x, h, rows, start, batch, T); break;
      case MAMBA: mamba(m, L, x, h, rows, batch, T, record); break;
      case MOE: moe(m, L, x, h, n); break;
      default: mlp(m, L, x, h, n); break;
    }
  }
}

// final-normed hidden [n, hid] -> logits [n, vocab] (optional) and argmax [n] (optional)
void head(Model& m, const float* g, int n, float* logits, int64_t* argmax) {
  if (!logits && !argmax) return;
  std::vector<float> tmp;
  float* lg = logits ? logits : (tmp.resize((size_t)n * m.vocab), tmp.data());
  matvec(m.lm_head, nullptr, g, m.hidden, n, lg, m.vocab);
  if (argmax)
    for (int i = 0; i < n; i++) {
      const float* l = lg + (long)i * m.vocab;
      int best = 0;
      for (int v = 1; v < m.vocab; v++)
        if (l[v] > l[best]) best = v;
      argmax[i] = best;
    }
}

void mtp_block(Model& m, const float* hidden, const int64_t* next_ids, const int64_t* rows, const int64_t* start,
               int batch, int T, float* g_out) {
  const int n = batch * T, hid = m.hidden;
  std::vector<float> cat((size_t)n * 2 * hid);
  for (int i = 0; i < n; i++) {
    rms_norm(m.embed + next_ids[i] * hid, m.enorm, hid, m.mtp_eps, cat.data() + (long)i * 2 * hid);
    rms_norm(hidden + (long)i * hid, m.hnorm, hid, m.mtp_eps, cat.data() + (long)i * 2 * hid + hid);
  }
  float* u = grow(m.buf_h, (size_t)n * hid);
  matvec(m.eh_proj, nullptr, cat.data(), 2 * hid, n, u, hid);
  run_layers(m, 1, u, rows, start, batch, T, false);
  for (int i = 0; i < n; i++) rms_norm(u + (long)i * hid, m.final_norm, hid, m.mtp_eps, g_out + (long)i * hid);
}

void backbone(Model& m, const int64_t* ids, const int64_t* rows, const int64_t* start, int batch, int T,
              bool record, float* hidden_out) {
  const int n = batch * T, hid = m.hidden;
  float* h = grow(m.buf_h, (size_t)n * hid);
  for (int i = 0; i < n; i++) std::memcpy(h + (long)i * hid, m.embed + ids[i] * hid, sizeof(float) * hid);
  run_layers(m, 0, h, rows, start, batch, T, record);
  for (int i = 0; i < n; i++) rms_norm(h + (long)i * hid, m.norm_f, hid, m.eps, hidden_out + (long)i * hid);
}

void commit(Model& m, const int64_t* rows, const int64_t* accept, int batch) {
  for (Layer& L : m.stacks[0]) {
    if (L.kind != MAMBA) continue;
    const int C = L.conv_dim, K = L.K, T = L.rec_T, W = K - 1 + T;
    const long srow = (long)L.H * L.P * L.N;
    for (int b = 0; b < batch; b++) {
      const float* win = L.rec_window.data() + (long)b * C * W;
      float* cs = L.conv_state + rows[b] * (long)C * (K - 1);
      for (int c = 0; c < C; c++)
        for (int j = 0; j < K - 1; j++) cs[c * (K - 1) + j] = win[c * W + accept[b] + 1 + j];
      std::memcpy(L.ssm_state + rows[b] * srow, L.rec_states.data() + ((long)b * T + accept[b]) * srow,
                  sizeof(float) * srow);
    }
  }
}

}  // namespace

// Layer descriptions, one struct per layer kind, mirrored field for field by the ctypes.Structure classes of
// runtime/native/__init__.py (MambaDesc, AttnDesc, MoeDesc, MlpDesc). Every one starts with the block's
// pre-norm weight and epsilon. Weight pointers: float32 tensors (null = absent bias / projection); state
// pointers: the slot pool's cache tensors, written in place.
struct MambaDesc {
  const float* norm_w;
  double eps;
  int64_t H, P, G, N, K, d_inner, conv_dim, group, has_dt_min;
  double dt_min;
  const float *in_proj, *in_bias, *conv_w, *conv_b, *A_log, *D, *dt_bias, *norm, *out_proj, *out_bias;
  float *conv_state, *ssm_state;
};
struct AttnDesc {
  const float* norm_w;
  double eps;
  int64_t nh, nkv, hd, cap;
  const float *q_proj, *q_proj_b, *k_proj, *k_proj_b, *v_proj, *v_proj_b, *o_proj, *o_proj_b;
  float *kc, *vc;
};
struct MoeDesc {  // experts stacked: up [E, F, X], down [E, X, F] (packed into the step's own copies)
  const float* norm_w;
  double eps;
  int64_t E, F, X, top_k, n_group, topk_group, norm_topk_prob, shared_F;
  double scale;
  const float *gate, *bias, *up, *down, *fc1, *fc2, *sh_up, *sh_down;
};
struct MlpDesc {
  const float* norm_w;
  double eps;
  int64_t F;
  const float *up, *up_b, *down, *down_b;
};

namespace {
// Adds one layer: the fields every description starts with, then fill(L, mat, hidden) sets the kind's own
// (mat: a weight matrix as the model streams it, bfloat16 copies where allowed and exact); false: refused.
template <class Desc, class Fill>
int add_layer(void* mp, int stack, int kind, const Desc* d, Fill fill) {
  Model* m = static_cast<Model*>(mp);
  Layer L{};
  L.kind = kind;
  L.norm_w = d->norm_w;
  L.eps = (float)d->eps;
  auto mat = [m](const float* w, int rows, int cols) { return make_mat(w, rows, cols, m->allow_bf16); };
  if (!fill(L, mat, m->hidden, m->allow_bf16)) return -1;
  m->stacks[stack].push_back(std::move(L));
  return 0;
}

// The routing fields of a MoE layer (shared by nt_add_moe and nt_route); false: sizes past route()'s buffers.
bool set_routing(Layer& L, const MoeDesc* d) {
  L.E = d->E, L.F = d->F, L.X = d->X, L.top_k = d->top_k, L.n_group = d->n_group, L.topk_group = d->topk_group;
  L.norm_topk = d->norm_topk_prob != 0, L.shF = d->shared_F, L.scale = (float)d->scale, L.bias = d->bias;
  return L.E <= 1024 && L.n_group <= 256 && L.top_k <= L.E && L.n_group >= 1 && L.E % L.n_group == 0;
}

void pack_experts(Layer& L, const float* up, const float* down, bool bf) {
  const long n = (long)L.E * L.F * L.X;
  const long su = packed_size(L.F, L.X), sd = packed_size(L.X, L.F);
  if (bf && exactly_bf16(up, n) && exactly_bf16(down, n)) {
    L.up_packed_h.resize(L.E * su);
    L.down_packed_h.resize(L.E * sd);
    for (int e = 0; e < L.E; e++) {
      pack4(up + (long)e * L.F * L.X, L.F, L.X, L.up_packed_h.data() + e * su);
      pack4(down + (long)e * L.X * L.F, L.X, L.F, L.down_packed_h.data() + e * sd);
    }
  } else {
    L.up_packed.resize(L.E * su);
    L.down_packed.resize(L.E * sd);
    for (int e = 0; e < L.E; e++) {
      pack4(up + (long)e * L.F * L.X, L.F, L.X, L.up_packed.data() + e * su);
      pack4(down + (long)e * L.X * L.F, L.X, L.F, L.down_packed.data() + e * sd);
    }
  }
}
}  // namespace

extern "C" {

// allow_bf16: keep an exact bfloat16 copy of every weight matrix whose values are all bfloat16 (see Mat).
void* nt_new(int hidden, int vocab, double eps, const float* embed, const float* norm_f, const float* lm_head,
             int allow_bf16) {
  Model* m = new Model();
  m->hidden = hidden;
  m->vocab = vocab;
  m->eps = (float)eps;
  m->embed = embed;
  m->norm_f = norm_f;
  m->allow_bf16 = allow_bf16 != 0;
  m->lm_head = make_mat(lm_head, vocab, hidden, m->allow_bf16);
  m->enorm = m->hnorm = m->final_norm = nullptr;
  return m;
}

// Bytes of weight matrices one step reads at most (bf16 copies counted instead of their float32 tensors).
long nt_weight_bytes(void* mp) {
  Model* m = static_cast<Model*>(mp);
  long total = m->lm_head.bytes() + m->eh_proj.bytes();
  for (auto& st : m->stacks)
    for (Layer& L : st) {
      for (const Mat* w : {&L.in_w, &L.out_w, &L.q_w, &L.k_w, &L.v_w, &L.o_w, &L.gate, &L.fc1, &L.fc2, &L.sh_up,
                           &L.sh_down, &L.up, &L.down})
        total += w->bytes();
      total += (long)(L.up_packed.size() + L.down_packed.size()) * 4;
      total += (long)(L.up_packed_h.size() + L.down_packed_h.size()) * 2;
    }
  return total;
}

void nt_free(void* m) { delete static_cast<Model*>(m); }

void nt_set_threads(int threads, long par_min) {
  g_threads = std::max(1, threads);
  g_par_min = par_min;
}

void nt_set_mtp(void* mp, double eps, const float* enorm, const float* hnorm, const float* eh_proj,
                const float* final_norm) {
  Model* m = static_cast<Model*>(mp);
  m->mtp_eps = (float)eps;
  m->enorm = enorm;
  m->hnorm = hnorm;
  m->eh_proj = make_mat(eh_proj, m->hidden, 2 * m->hidden, m->allow_bf16);
  m->final_norm = final_norm;
}

int nt_add_mamba(void* mp, int stack, const MambaDesc* d) {
  return add_layer(mp, stack, MAMBA, d, [d](Layer& L, auto mat, int hid, bool) {
    L.H = d->H, L.P = d->P, L.G = d->G, L.N = d->N, L.K = d->K, L.d_inner = d->d_inner;
    L.conv_dim = d->conv_dim, L.group = d->group, L.has_dt_min = d->has_dt_min != 0, L.dt_min = (float)d->dt_min;
    L.in_w = mat(d->in_proj, L.d_inner + L.conv_dim + L.H, hid), L.in_b = d->in_bias;
    L.conv_w = d->conv_w, L.conv_b = d->conv_b, L.A_log = d->A_log, L.D = d->D, L.dt_bias = d->dt_bias;
    L.gnorm_w = d->norm, L.out_w = mat(d->out_proj, hid, L.d_inner), L.out_b = d->out_bias;
    L.conv_state = d->conv_state, L.ssm_state = d->ssm_state;
    return true;
  });
}

int nt_add_attn(void* mp, int stack, const AttnDesc* d) {
  return add_layer(mp, stack, ATTN, d, [d](Layer& L, auto mat, int hid, bool) {
    L.nh = d->nh, L.nkv = d->nkv, L.hd = d->hd, L.cap = d->cap, L.kc = d->kc, L.vc = d->vc;
    L.q_w = mat(d->q_proj, L.nh * L.hd, hid), L.q_b = d->q_proj_b;
    L.k_w = mat(d->k_proj, L.nkv * L.hd, hid), L.k_b = d->k_proj_b;
    L.v_w = mat(d->v_proj, L.nkv * L.hd, hid), L.v_b = d->v_proj_b;
    L.o_w = mat(d->o_proj, hid, L.nh * L.hd), L.o_b = d->o_proj_b;
    return true;
  });
}

int nt_add_moe(void* mp, int stack, const MoeDesc* d) {
  return add_layer(mp, stack, MOE, d, [d](Layer& L, auto mat, int hid, bool bf) {
    if (!set_routing(L, d)) return false;
    L.gate = mat(d->gate, L.E, hid), L.fc1 = mat(d->fc1, L.X, hid), L.fc2 = mat(d->fc2, hid, L.X);
    L.sh_up = mat(d->sh_up, L.shF, hid), L.sh_down = mat(d->sh_down, hid, L.shF);
    pack_experts(L, d->up, d->down, bf);
    return true;
  });
}

int nt_add_mlp(void* mp, int stack, const MlpDesc* d) {
  return add_layer(mp, stack, MLP, d, [d](Layer& L, auto mat, int hid, bool) {
    L.F = d->F, L.up = mat(d->up, L.F, hid), L.up_b = d->up_b, L.down = mat(d->down, hid, L.F), L.down_b = d->down_b;
    return true;
  });
}

// The step's router on its own (the routing tie test pins it): logits [n, E] -> idx [n, top_k], wts [n, top_k].
int nt_route(const MoeDesc* d, const float* logits, int n, int64_t* idx, float* wts) {
  Layer L{};
  if (!set_routing(L, d)) return 4;
  std::vector<int> ibuf(L.top_k);
  for (int i = 0; i < n; i++) {
    route(L, logits + (long)i * L.E, ibuf.data(), wts + (long)i * L.top_k);
    for (int r = 0; r < L.top_k; r++) idx[(long)i * L.top_k + r] = ibuf[r];
  }
  return 0;
}

// Argument checks of the entry points (the caches are raw pointers here: nothing may write past them).
// 0: fine; 1: a row outside the cache; 2: a position past its capacity (or negative); 3: a token id outside
// the vocabulary; 4: an unsupported call (no MTP block bound).
int check(const Model& m, const int64_t* ids, long n_ids, const int64_t* rows, const int64_t* start, int batch,
          long span, bool mtp) {
  const long nrows = mtp ? m.mtp_rows : m.rows, cap = mtp ? m.mtp_cap : m.cap;
  if (mtp && (!m.eh_proj || nrows == 0)) return 4;
  for (int b = 0; b < batch; b++) {
    if (rows[b] < 0 || rows[b] >= nrows) return 1;
    if (start && (start[b] < 0 || start[b] + span > cap)) return 2;
  }
  for (long i = 0; i < n_ids; i++)
    if (ids[i] < 0 || ids[i] >= m.vocab) return 3;
  return 0;
}

// Backbone step: ids [batch, T] at positions start[b].. of cache rows `rows` -> final-normed hidden
// [batch*T, hidden], logits [batch*T, vocab] and/or argmax [batch*T] (either may be null). record != 0: the
// Mamba state is not written; the state after every token is kept for nt_commit.
int nt_forward(void* mp, const int64_t* ids, const int64_t* rows, const int64_t* start, int batch, int T,
               int record, float* hidden_out, float* logits_out, int64_t* argmax_out) {
  Model& m = *static_cast<Model*>(mp);
  StepScope scope;
  if (int e = check(m, ids, (long)batch * T, rows, start, batch, T, false)) return e;
  backbone(m, ids, rows, start, batch, T, record != 0, hidden_out);
  head(m, hidden_out, batch * T, logits_out, argmax_out);
  return 0;
}

// The engine's greedy decode step: start[b] = lengths[rows[b]] (the cache's committed lengths, int64), one
// token per row, argmax out, lengths[rows[b]] += 1. One call per generated token, no tensor ops around it.
// hidden_scratch: [batch, hidden] floats, or null for an internal buffer.
int nt_decode_greedy(void* mp, const int64_t* ids, const int64_t* rows, int64_t* lengths, int batch,
                     float* hidden_scratch, int64_t* argmax_out) {
  Model& m = *static_cast<Model*>(mp);
  StepScope scope;
  if (int e = check(m, ids, batch, rows, nullptr, batch, 1, false)) return e;
  std::vector<int64_t> start(batch);
  for (int b = 0; b < batch; b++) start[b] = lengths[rows[b]];
  if (int e = check(m, ids, 0, rows, start.data(), batch, 1, false)) return e;
  std::vector<float> hbuf;
  if (!hidden_scratch) hidden_scratch = (hbuf.resize((size_t)batch * m.hidden), hbuf.data());
  backbone(m, ids, rows, start.data(), batch, 1, false, hidden_scratch);
  head(m, hidden_scratch, batch, nullptr, argmax_out);
  for (int b = 0; b < batch; b++) lengths[rows[b]] += 1;
  return 0;
}

int nt_commit(void* mp, const int64_t* rows, const int64_t* accept, int batch) {
  Model& m = *static_cast<Model*>(mp);
  if (int e = check(m, nullptr, 0, rows, nullptr, batch, 0, false)) return e;
  for (Layer& L : m.stacks[0])
    if (L.kind == MAMBA) {
      if (L.rec_batch != batch) return 4;  // commit only what the last recorded step kept
      for (int b = 0; b < batch; b++)
        if (accept[b] < 0 || accept[b] >= L.rec_T) return 2;
    }
  commit(m, rows, accept, batch);
  return 0;
}

// MTP block: (final-normed h [batch*T, hidden], next ids [batch*T]) -> g [batch*T, hidden], logits / argmax.
int nt_mtp(void* mp, const float* hidden, const int64_t* next_ids, const int64_t* rows, const int64_t* start,
           int batch, int T, float* g_out, float* logits_out, int64_t* argmax_out) {
  Model& m = *static_cast<Model*>(mp);
  StepScope scope;
  if (int e = check(m, next_ids, (long)batch * T, rows, start, batch, T, true)) return e;
  mtp_block(m, hidden, next_ids, rows, start, batch, T, g_out);
  head(m, g_out, batch * T, logits_out, argmax_out);
  return 0;
}

// One greedy MTP iteration (StepBackend.spec_greedy, runtime/backend.py): ids [batch, K+1] = [last, d_1..d_K] ->
// y [batch, K+1] target tokens, j [batch] accepted drafts, drafts [batch, K] next drafts.
int nt_spec_greedy(void* mp, const int64_t* ids, const int64_t* rows, const int64_t* start, int batch, int K,
                   int64_t* y, int64_t* j, int64_t* drafts, int64_t* lengths, int64_t* mtp_lengths) {
  Model& m = *static_cast<Model*>(mp);
  StepScope scope;
  if (K < 1) return 4;
  if (int e = check(m, ids, (long)batch * (K + 1), rows, nullptr, batch, 0, false)) return e;
  std::vector<int64_t> start_v(batch);
  if (!start) {  // the engine's call: start from the committed lengths, which are advanced at the end
    for (int b = 0; b < batch; b++) start_v[b] = lengths[rows[b]];
    start = start_v.data();
  }
  // the verify writes positions start..start+K, the drafts up to start+2K-1 of the MTP cache
  if (int e = check(m, nullptr, 0, rows, start, batch, K + 1, false)) return e;
  if (int e = check(m, nullptr, 0, rows, start, batch, 2 * K, true)) return e;
  const int T = K + 1, n = batch * T, hid = m.hidden;
  std::vector<float> hbuf((size_t)n * hid), gbuf((size_t)n * hid), gsel((size_t)batch * hid);
  backbone(m, ids, rows, start, batch, T, true, hbuf.data());
  head(m, hbuf.data(), n, nullptr, y);
  for (int b = 0; b < batch; b++) {
    int a = 0;
    while (a < K && ids[b * T + 1 + a] == y[b * T + a]) a++;
    j[b] = a;
  }
  commit(m, rows, j, batch);
  // The MTP block over the pairs (h_t, y_t) up to the last accepted position only: the entries after it would
  // write MTP KV past the committed length (overwritten by the drafts below before anything reads it) and
  // draft from a rejected position. Tm = 1 + max accepted; rows with fewer accepted run spare entries.
  int Tm = 1;
  for (int b = 0; b < batch; b++) Tm = std::max(Tm, (int)j[b] + 1);
  std::vector<float> hsel((size_t)batch * Tm * hid);
  std::vector<int64_t> ysel((size_t)batch * Tm);
  for (int b = 0; b < batch; b++)
    for (int t = 0; t < Tm; t++) {
      std::memcpy(hsel.data() + ((long)b * Tm + t) * hid, hbuf.data() + ((long)b * T + t) * hid, sizeof(float) * hid);
      ysel[b * Tm + t] = y[b * T + t];
    }
  mtp_block(m, hsel.data(), ysel.data(), rows, start, batch, Tm, gbuf.data());
  for (int b = 0; b < batch; b++)
    std::memcpy(gsel.data() + (long)b * hid, gbuf.data() + ((long)b * Tm + j[b]) * hid, sizeof(float) * hid);
  std::vector<int64_t> d(batch), pos(batch);
  head(m, gsel.data(), batch, nullptr, d.data());
  for (int b = 0; b < batch; b++) {
    drafts[(long)b * K] = d[b];
    pos[b] = start[b] + j[b] + 1;
  }
  std::vector<float> gnext((size_t)batch * hid);
  for (int i = 1; i < K; i++) {
    mtp_block(m, gsel.data(), d.data(), rows, pos.data(), batch, 1, gnext.data());
    head(m, gnext.data(), batch, nullptr, d.data());
    std::swap(gsel, gnext);
    for (int b = 0; b < batch; b++) {
      drafts[(long)b * K + i] = d[b];
      pos[b]++;
    }
  }
  if (lengths)  // both caches now hold the committed prefix through the last accepted token
    for (int b = 0; b < batch; b++) {
      lengths[rows[b]] = start[b] + j[b] + 1;
      if (mtp_lengths) mtp_lengths[rows[b]] = start[b] + j[b] + 1;
    }
  return 0;
}

void nt_set_caches(void* mp, long rows, long cap, long mtp_rows, long mtp_cap) {
  Model* m = static_cast<Model*>(mp);
  m->rows = rows, m->cap = cap, m->mtp_rows = mtp_rows, m->mtp_cap = mtp_cap;
}

}  // extern "C"
