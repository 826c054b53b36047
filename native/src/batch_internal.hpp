// What the batched decoder's source files share: its constants, a few helpers and its
// thread pool (batch_decoder.cpp: set-up and the decoder step; batch_encoder.cpp: the mel
// spectrogram and the encoder; batch_slots.cpp: which slots windows sit in; and the
// others named batch_*). Internal to the extension.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "batch_decoder.hpp"
#include "ggml.h"

namespace whisperd {

namespace batch_detail {

constexpr int kMelFrames = 3000;  // 30 s
constexpr int kFrame = 400;       // samples per STFT frame (WHISPER_N_FFT)
constexpr int kHop = 160;         // WHISPER_HOP_LENGTH
constexpr int kBins = kFrame / 2 + 1;  // the DFT's bins, the mel filterbank's width
// whisper.cpp takes the spectrogram's maximum over every frame that sees audio: a full
// 30 s window reaches into frame 3001 (its reflected start shifts it by 200 samples).
constexpr int kMelFramesSeen = kMelFrames + 2;
constexpr int kMelInput = (kMelFramesSeen - 1) * kHop + kFrame;
constexpr int kKvPad = 256;       // flash attention walks K/V in blocks of 256 rows
constexpr int kMaxNodes = 16384;
constexpr float kEps = 1e-5f;

// WHISPERD_BATCH_TRACE=1: each stage of setting up and running the decoder on stderr.
inline void trace(const char *what) {
    static const bool on = getenv("WHISPERD_BATCH_TRACE") != nullptr;
    if (on) {
        fprintf(stderr, "batch_decoder: %s\n", what);
        fflush(stderr);
    }
}

inline int pow2_at_least(int n) {
    int p = 1;
    while (p < n) {
        p *= 2;
    }
    return p;
}

inline double ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

inline ggml_tensor *layer_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *w, ggml_tensor *b) {
    return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, kEps), w), b);
}

}  // namespace batch_detail

// A few threads that run one function over indices 0..n-1 per call; spawning threads on
// every decoder step cost ~1 ms a step.
class BatchDecoder::Pool {
public:
    explicit Pool(int n) {
        for (int i = 1; i < n; ++i) {
            threads_.emplace_back([this]() { loop(); });
        }
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto &t : threads_) {
            t.join();
        }
    }
    void run(size_t n, const std::function<void(size_t)> &fn) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            fn_ = &fn;
            n_ = n;
            next_ = 0;
            busy_ = threads_.size();
            ++gen_;
        }
        cv_.notify_all();
        work(fn, n);
        std::unique_lock<std::mutex> lk(mu_);
        done_.wait(lk, [this]() { return busy_ == 0; });
        fn_ = nullptr;
    }

private:
    void work(const std::function<void(size_t)> &fn, size_t n) {
        for (size_t i; (i = next_.fetch_add(1)) < n;) {
            fn(i);
        }
    }
    void loop() {
        size_t seen = 0;
        for (;;) {
            const std::function<void(size_t)> *fn;
            size_t n;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&]() { return stop_ || gen_ != seen; });
                if (stop_) {
                    return;
                }
                seen = gen_;
                fn = fn_;
                n = n_;
            }
            work(*fn, n);
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (--busy_ == 0) {
                    done_.notify_all();
                }
            }
        }
    }
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_, done_;
    const std::function<void(size_t)> *fn_ = nullptr;
    size_t n_ = 0, busy_ = 0, gen_ = 0;
    std::atomic<size_t> next_{0};
    bool stop_ = false;
};

}  // namespace whisperd
