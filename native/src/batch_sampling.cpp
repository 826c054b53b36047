// The batched decoder's step after its graph: reading back what each window's rows need
// and feeding the windows. A greedy window (the common case) needs only a summary of its
// one row (greedy_summary.hpp), computed where the logits are: on the GPU by
// cuda_sampler.hpp, so that only the summaries cross the bus, or on the CPU's threads.
// Beams, sampling at a temperature and language detection read whole rows; on a GPU only
// those rows are downloaded.
#include <cstring>

#include "batch_decoder.hpp"
#include "batch_internal.hpp"
#include "errors.hpp"
#ifdef WHISPERD_WITH_CUDA
#include "cuda_sampler.hpp"
#endif
#include "ggml-backend.h"
#include "ggml-cpu.h"

namespace whisperd {

using namespace batch_detail;

void BatchDecoder::start_cuda_sampler(int gpu_device) {
#ifdef WHISPERD_WITH_CUDA
    if (ggml_backend_is_cpu(backend_)) {
        return;
    }
    try {
        cuda_sampler_ = std::make_unique<CudaSampler>(gpu_device, greedy_vocab_);
        trace("CUDA greedy sampler ready");
    } catch (const std::exception &e) {
        // The CPU summaries give the same tokens, only slower: not worth failing a load.
        fprintf(stderr, "whisperd: greedy sampling stays on the CPU: %s\n", e.what());
    }
#else
    (void)gpu_device;
#endif
}

bool BatchDecoder::gpu_sampling() const {
#ifdef WHISPERD_WITH_CUDA
    return gpu_sampling_ && cuda_sampler_ != nullptr;
#else
    return false;
#endif
}

std::vector<WindowOutput> BatchDecoder::sample(const StepLogits &lg, int W, int r_out,
                                               std::chrono::steady_clock::time_point t0) {
    const size_t n_vocab = static_cast<size_t>(vocab_.n_vocab);
    std::vector<int> live;
    std::vector<char> greedy(W, 0);
    std::vector<int> n_out(W, 0);
    for (int s = 0; s < W; ++s) {
        if (slots_[s] == nullptr) {
            continue;
        }
        live.push_back(s);
        greedy[s] = slots_[s]->greedy();
        for (const Row &r : slots_[s]->rows()) {
            n_out[s] += r.output ? 1 : 0;
        }
        if (greedy[s] && n_out[s] != 1) {
            throw WhisperError("a greedy window asked for " + std::to_string(n_out[s]) + " rows of logits");
        }
    }
    const bool device_summaries = !lg.on_host && gpu_sampling();
    const float *base = nullptr;
    if (lg.on_host) {
        base = lg.data;  // the CPU backend's own memory: no copy
    } else {
        const size_t n_rows = static_cast<size_t>(W) * r_out;
        logits_.resize(n_rows * n_vocab);
        if (!device_summaries) {
            lg.read(0, n_rows, logits_.data());
        } else {
            // Only the rows of windows that read whole rows; adjacent rows in one copy.
            size_t lo = 0, hi = 0;
            auto flush = [&]() {
                if (hi > lo) {
                    lg.read(lo, hi - lo, logits_.data() + lo * n_vocab);
                }
            };
            for (int s : live) {
                if (greedy[s]) {
                    continue;
                }
                const size_t a = static_cast<size_t>(s) * r_out;
                if (a != hi) {
                    flush();
                    lo = a;
                }
                hi = a + n_out[s];
            }
            flush();
        }
        base = logits_.data();
    }
    stats_.decode_ms += ms_since(t0);

    const auto t1 = std::chrono::steady_clock::now();
    std::vector<GreedySummary> sums(W);
#ifdef WHISPERD_WITH_CUDA
    if (device_summaries) {
        std::vector<int32_t> rows;
        std::vector<GreedyMask> masks;
        for (int s : live) {
            if (greedy[s]) {
                rows.push_back(s * r_out);
                masks.push_back(slots_[s]->greedy_mask());
            }
        }
        std::vector<GreedySummary> got;
        cuda_sampler_->summarise(lg.data, rows, masks, got);
        size_t k = 0;
        for (int s : live) {
            if (greedy[s]) {
                sums[s] = got[k++];
            }
        }
    }
#endif
    // Windows spread over threads.
    std::vector<std::string> errors(live.size());
    pool_->run(live.size(), [&](size_t k) {
        const int s = live[k];
        WindowDecoder &win = *slots_[s];
        const float *row0 = base + static_cast<size_t>(s) * r_out * n_vocab;
        try {
            if (greedy[s]) {
                if (!device_summaries) {
                    sums[s] = greedy_summary(greedy_vocab_, win.greedy_mask(), row0);
                }
                win.feed_greedy(sums[s]);
            } else {
                std::vector<const float *> ptrs;
                for (int o = 0; o < n_out[s]; ++o) {
                    ptrs.push_back(row0 + o * n_vocab);
                }
                win.feed(ptrs);
            }
        } catch (const std::exception &e) {
            errors[k] = e.what();
        }
    });
    for (const auto &e : errors) {
        if (!e.empty()) {
            throw WhisperError("batched sampling failed: " + e);
        }
    }
    std::vector<WindowOutput> done;
    for (int s : live) {
        if (slots_[s]->finished()) {
            done.push_back(slots_[s]->result());
            slots_[s].reset();
        }
    }
    stats_.sample_ms += ms_since(t1);
    return done;
}

std::vector<BatchDecoder::GreedyPick> BatchDecoder::greedy_picks(const std::vector<float> &logits,
                                                                 const std::vector<GreedyMask> &masks,
                                                                 bool device) {
    const size_t n_vocab = static_cast<size_t>(vocab_.n_vocab);
    if (logits.size() != masks.size() * n_vocab) {
        throw std::invalid_argument("greedy_picks: one row of n_vocab logits per mask");
    }
    std::vector<GreedySummary> sums;
    if (device) {
#ifdef WHISPERD_WITH_CUDA
        if (cuda_sampler_ == nullptr) {
            throw WhisperError("greedy_picks: this decoder has no CUDA sampler");
        }
        sums = cuda_sampler_->summarise_host(logits, masks);
#else
        throw WhisperError("greedy_picks: not a CUDA build");
#endif
    } else {
        for (size_t i = 0; i < masks.size(); ++i) {
            sums.push_back(greedy_summary(greedy_vocab_, masks[i], logits.data() + i * n_vocab));
        }
    }
    std::vector<GreedyPick> out;
    for (size_t i = 0; i < sums.size(); ++i) {
        const GreedyToken t = greedy_token(sums[i], vocab_.beg);
        const float ns = (masks[i].flags & kMaskRaw) ? greedy_no_speech(sums[i]) : 0.0f;
        out.emplace_back(t.id, t.tid, t.p, t.plog, t.pt, ns);
    }
    return out;
}

}  // namespace whisperd
