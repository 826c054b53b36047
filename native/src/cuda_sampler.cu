// The greedy summary (greedy_summary.cpp) as a CUDA kernel: one block per row, two passes
// over the row (the maxima, then the sums of exponentials relative to them), each thread
// striding over the vocabulary so that a warp's loads are contiguous. Suppressed ranges
// (text under the timestamp-pair rule, timestamps outside [ts_lo, ts_hi)) are not read.
// Nothing here needs more than sm_75 (warp shuffles, plain float math).
#include "cuda_sampler.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda_common.cuh"
#include "errors.hpp"

namespace whisperd {

namespace {

// kThreads (cuda_common.cuh): a row of 51866 logits is ~200 values a thread
constexpr int kWarps = kThreads / 32;

struct Job {
    int32_t row;
    GreedyMask mask;
};

struct Consts {
    int n_vocab, eot, beg, space, nosp;
    const uint8_t *special_off;  // [eot, beg)
};

// (v, i) becomes the better of itself and (v2, i2): the larger value, the lower id on ties
// (as the CPU's first-max scan).
__device__ void keep_best(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 >= 0 && (i < 0 || i2 < i))) {
        v = v2;
        i = i2;
    }
}

// Every thread gets the block's best (v, i). `rv`/`ri` hold one pair per warp.
__device__ void block_best(float &v, int &i, float *rv, int *ri) {
    for (int o = 16; o > 0; o >>= 1) {
        keep_best(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    }
    __syncthreads();  // an earlier call's readers are done with rv/ri
    if ((threadIdx.x & 31) == 0) {
        rv[threadIdx.x >> 5] = v;
        ri[threadIdx.x >> 5] = i;
    }
    __syncthreads();
    v = -INFINITY;
    i = -1;
    for (int w = 0; w < kWarps; ++w) {
        keep_best(v, i, rv[w], ri[w]);
    }
}

__global__ void summarise_rows(const float *logits, const Job *jobs, GreedySummary *out, Consts c) {
    __shared__ float rv[kWarps];
    __shared__ int ri[kWarps];
    const Job job = jobs[blockIdx.x];
    const GreedyMask m = job.mask;
    const float *x = logits + static_cast<size_t>(job.row) * c.n_vocab;
    const int tid = threadIdx.x;
    const bool initial = (m.flags & kMaskInitial) != 0;
    const bool text_on = (m.flags & kMaskTextOff) == 0;
    const int ts_lo = max(m.ts_lo, c.beg), ts_hi = min(m.ts_hi, c.n_vocab);
    const int space = initial ? c.space : -1;
    GreedySummary s;
    s.lse = s.text_logit = s.ts_logit = s.ts_lse = -INFINITY;
    if (m.flags & kMaskRaw) {  // the same for the whole block: the syncs inside are safe
        float mx = -INFINITY;
        int unused = -1;
        for (int i = tid; i < c.n_vocab; i += kThreads) {
            mx = fmaxf(mx, x[i]);
        }
        block_best(mx, unused, rv, ri);
        float sum = 0.0f;
        for (int i = tid; i < c.n_vocab; i += kThreads) {
            sum += expf(x[i] - mx);
        }
        sum = block_sum(sum, rv);
        s.raw_lse = mx + logf(sum);
        s.nosp_logit = x[c.nosp];
    }
    if (m.forced >= 0) {
        if (tid == 0) {
            const int t = m.forced;
            const bool ok = t < c.eot ? text_on : t < c.beg || (t >= ts_lo && t < ts_hi);
            if (ok) {
                s.lse = 0.0f;
                if (t < c.beg) {
                    s.text_id = t;
                    s.text_logit = 0.0f;
                } else {
                    s.ts_id = t;
                    s.ts_logit = s.ts_lse = 0.0f;
                }
            }
            out[blockIdx.x] = s;
        }
        return;
    }
    auto allowed_special = [&](int i) {
        return !c.special_off[i - c.eot] && !(initial && i == c.eot);
    };
    // pass 1: the best text token (specials included) and the best timestamp
    float tv = -INFINITY, sv = -INFINITY;
    int ti = -1, si = -1;
    if (text_on) {
        for (int i = tid; i < c.eot; i += kThreads) {
            const float v = x[i];
            if (v > tv && i != space) {
                tv = v;
                ti = i;
            }
        }
    }
    for (int i = c.eot + tid; i < c.beg; i += kThreads) {
        const float v = x[i];
        if (v > tv && allowed_special(i)) {
            tv = v;
            ti = i;
        }
    }
    for (int i = ts_lo + tid; i < ts_hi; i += kThreads) {
        const float v = x[i];
        if (v > sv) {
            sv = v;
            si = i;
        }
    }
    block_best(tv, ti, rv, ri);
    block_best(sv, si, rv, ri);
    s.text_id = ti;
    s.text_logit = tv;
    s.ts_id = si;
    s.ts_logit = sv;
    const float mx = fmaxf(tv, sv);
    if (mx == -INFINITY) {
        if (tid == 0) {
            out[blockIdx.x] = s;
        }
        return;
    }
    // pass 2: exponentials relative to the maxima
    float sum = 0.0f, ts_sum = 0.0f;
    if (text_on) {
        for (int i = tid; i < c.eot; i += kThreads) {
            if (i != space) {
                sum += expf(x[i] - mx);
            }
        }
    }
    for (int i = c.eot + tid; i < c.beg; i += kThreads) {
        if (allowed_special(i)) {
            sum += expf(x[i] - mx);
        }
    }
    if (si >= 0) {
        for (int i = ts_lo + tid; i < ts_hi; i += kThreads) {
            const float v = x[i];
            sum += expf(v - mx);
            ts_sum += expf(v - sv);
        }
    }
    sum = block_sum(sum, rv);
    ts_sum = block_sum(ts_sum, rv);
    if (tid == 0) {
        s.lse = mx + logf(sum);
        if (si >= 0) {
            s.ts_lse = sv + logf(ts_sum);
        }
        out[blockIdx.x] = s;
    }
}

}  // namespace

struct CudaSampler::Impl {
    int device = 0;
    cudaStream_t stream = nullptr;
    Consts c{};
    uint8_t *special_off = nullptr;
    Job *jobs = nullptr;
    GreedySummary *out = nullptr;
    int cap = 0;  // rows jobs/out have room for
    std::vector<Job> host_jobs;

    ~Impl() {
        cudaSetDevice(device);
        if (stream != nullptr) {
            cudaStreamSynchronize(stream);
            cudaStreamDestroy(stream);
        }
        cudaFree(special_off);
        cudaFree(jobs);
        cudaFree(out);
    }

    void reserve(int n) {
        if (n <= cap) {
            return;
        }
        cudaFree(jobs);
        cudaFree(out);
        jobs = nullptr;
        out = nullptr;
        cap = 0;
        const int want = n < 256 ? 256 : n;
        check(cudaMalloc(reinterpret_cast<void **>(&jobs), want * sizeof(Job)), "greedy sampler: rows");
        check(cudaMalloc(reinterpret_cast<void **>(&out), want * sizeof(GreedySummary)),
              "greedy sampler: summaries");
        cap = want;
    }

    void run(const float *logits, const std::vector<int32_t> &rows, const std::vector<GreedyMask> &masks,
             std::vector<GreedySummary> &result) {
        const int n = static_cast<int>(rows.size());
        result.resize(n);
        if (n == 0) {
            return;
        }
        if (masks.size() != rows.size()) {
            throw std::invalid_argument("greedy sampler: one mask per row");
        }
        check(cudaSetDevice(device), "greedy sampler: select the GPU");
        reserve(n);
        host_jobs.resize(n);
        for (int i = 0; i < n; ++i) {
            host_jobs[i] = Job{rows[i], masks[i]};
        }
        check(cudaMemcpyAsync(jobs, host_jobs.data(), n * sizeof(Job), cudaMemcpyHostToDevice, stream),
              "greedy sampler: upload");
        summarise_rows<<<n, kThreads, 0, stream>>>(logits, jobs, out, c);
        check(cudaGetLastError(), "greedy sampler: kernel");
        check(cudaMemcpyAsync(result.data(), out, n * sizeof(GreedySummary), cudaMemcpyDeviceToHost, stream),
              "greedy sampler: download");
        check(cudaStreamSynchronize(stream), "greedy sampler: kernel");
    }
};

CudaSampler::CudaSampler(int device, const GreedyVocab &v) : impl_(std::make_unique<Impl>()) {
    Impl &m = *impl_;
    m.device = device;
    check(cudaSetDevice(device), "greedy sampler: select the GPU");
    try {
        check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "greedy sampler: stream");
        check(cudaMalloc(reinterpret_cast<void **>(&m.special_off), v.special_off.size() + 1),
              "greedy sampler: specials");
        check(cudaMemcpy(m.special_off, v.special_off.data(), v.special_off.size(), cudaMemcpyHostToDevice),
              "greedy sampler: specials");
        m.c = Consts{v.n_vocab, v.eot, v.beg, v.space, v.nosp, m.special_off};
        m.reserve(1);
    } catch (...) {
        impl_.reset();
        throw;
    }
}

CudaSampler::~CudaSampler() = default;

void CudaSampler::summarise(const float *logits, const std::vector<int32_t> &rows,
                            const std::vector<GreedyMask> &masks, std::vector<GreedySummary> &out) {
    impl_->run(logits, rows, masks, out);
}

std::vector<GreedySummary> CudaSampler::summarise_host(const std::vector<float> &logits,
                                                       const std::vector<GreedyMask> &masks) {
    Impl &m = *impl_;
    check(cudaSetDevice(m.device), "greedy sampler: select the GPU");
    float *dev = nullptr;
    check(cudaMalloc(reinterpret_cast<void **>(&dev), logits.size() * sizeof(float)), "greedy sampler: test rows");
    std::vector<GreedySummary> out;
    try {
        check(cudaMemcpy(dev, logits.data(), logits.size() * sizeof(float), cudaMemcpyHostToDevice),
              "greedy sampler: test rows");
        std::vector<int32_t> rows(masks.size());
        for (size_t i = 0; i < rows.size(); ++i) {
            rows[i] = static_cast<int32_t>(i);
        }
        m.run(dev, rows, masks, out);
    } catch (...) {
        cudaFree(dev);
        throw;
    }
    cudaFree(dev);
    return out;
}

}  // namespace whisperd
