// Whisper's logit rules for one window: the suppressed specials, the timestamp rules and
// the forced tokens of benchmark mode, then what a chosen token means for its sequence.
// Apart from window_decoder.cpp so the rules read on their own, without the search.
#include "window_decoder.hpp"

#include <algorithm>
#include <cmath>

namespace whisperd {

namespace {

constexpr int kDeltaMin = 10;             // centiseconds: stop when 0.1 s is left

float neg_inf() { return -INFINITY; }

}  // namespace

int WindowDecoder::forced_token(const Seq &s) const {
    const int n = spec_.forced_tokens;
    const int k = static_cast<int>(s.tokens.size());
    if (k == 0) {
        return v_.beg;
    }
    if (k >= n - 1) {
        return v_.eot;
    }
    if (k == n - 2) {
        return std::min(v_.beg + 1500, v_.n_vocab - 1);
    }
    return 1000 + (k * 97) % 20000;
}

void WindowDecoder::forced(const Seq &s, std::vector<float> &logits) const {
    std::fill(logits.begin(), logits.end(), neg_inf());
    logits[forced_token(s)] = 0.0f;
}

void WindowDecoder::process_logits(const Seq &s, const float *raw, float temperature,
                                   std::vector<float> &logits,
                                   std::vector<float> &logprobs) const {
    // greedy_mask() (greedy_summary.cpp) states these rules for greedy rows: keep them in step.
    const int n = v_.n_vocab;
    logits.assign(raw, raw + n);
    if (temperature > 0.0f) {
        for (float &x : logits) {
            x /= temperature;
        }
    }
    const bool is_initial = s.tokens.empty();
    if (is_initial) {
        logits[v_.eot] = neg_inf();
        if (v_.space >= 0) {
            logits[v_.space] = neg_inf();
        }
    }
    logits[v_.not_ts] = neg_inf();
    logits[v_.sot] = neg_inf();
    logits[v_.nosp] = neg_inf();
    logits[v_.solm] = neg_inf();
    logits[v_.translate] = neg_inf();
    logits[v_.transcribe] = neg_inf();
    logits[v_.prev] = neg_inf();
    for (int t : v_.lang_tokens) {
        if (t < n) {
            logits[t] = neg_inf();
        }
    }
    if (spec_.forced_tokens > 0) {
        forced(s, logits);
    }
    // Timestamps come in pairs, except right before the end of text.
    const size_t k = s.tokens.size();
    const bool last_ts = k > 0 && s.tokens.back().id >= v_.beg;
    const bool penult_ts = k < 2 || s.tokens[k - 2].id >= v_.beg;
    if (last_ts) {
        if (penult_ts) {
            std::fill(logits.begin() + v_.beg, logits.end(), neg_inf());
        } else {
            std::fill(logits.begin(), logits.begin() + v_.eot, neg_inf());
        }
    }
    if (is_initial) {
        const int tid0 = kMaxInitialTsTokens;
        if (v_.beg + tid0 + 1 < n) {
            std::fill(logits.begin() + v_.beg + tid0 + 1, logits.end(), neg_inf());
        }
    }
    if (s.has_ts) {
        const int tid0 = s.seek_delta / 2;
        std::fill(logits.begin() + v_.beg, logits.begin() + std::min(n, v_.beg + tid0), neg_inf());
    }
    // log_softmax
    logprobs.resize(n);
    const float mx = *std::max_element(logits.begin(), logits.end());
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
        if (logits[i] > -INFINITY) {
            sum += expf(logits[i] - mx);
        }
    }
    const float lse = logf(sum) + mx;
    for (int i = 0; i < n; ++i) {
        logprobs[i] = logits[i] > -INFINITY ? logits[i] - lse : neg_inf();
    }
    // A timestamp when all timestamps together are likelier than any text token.
    float ts_logprob = neg_inf();
    {
        const float ts_max = *std::max_element(logprobs.begin() + v_.beg, logprobs.end());
        float acc = 0.0f;
        for (int i = v_.beg; i < n; ++i) {
            if (logprobs[i] > -INFINITY) {
                acc += expf(logprobs[i] - ts_max);
            }
        }
        if (acc > 0.0f) {
            ts_logprob = logf(acc) + ts_max;
        }
    }
    const float text_max = *std::max_element(logprobs.begin(), logprobs.begin() + v_.beg);
    if (ts_logprob > text_max) {
        std::fill(logits.begin(), logits.begin() + v_.beg, neg_inf());
        std::fill(logprobs.begin(), logprobs.begin() + v_.beg, neg_inf());
    }
}

void WindowDecoder::after_token(Seq &s, int i) {
    const Tok &tok = s.tokens.back();
    if (tok.id > v_.beg) {
        const int seek_delta_new = 2 * (tok.id - v_.beg);
        if (s.has_ts && s.seek_delta > seek_delta_new && s.result_len < i) {
            s.failed = true;
            return;
        }
        s.seek_delta = seek_delta_new;
        s.result_len = i + 1;
        s.has_ts = true;
    }
    if (tok.id == v_.eot || (s.has_ts && s.seek_delta + kDeltaMin >= seek_end_)) {
        if (s.result_len == 0) {
            if (s.seek_delta + kDeltaMin >= seek_end_) {
                s.result_len = i + 1;
            } else {
                s.failed = true;
                return;
            }
        }
        s.completed = true;
        return;
    }
    if (i == n_max_ - 1 && (s.result_len == 0 || s.seek_delta < 100 * 30 / 2)) {
        s.failed = true;
    }
}

}  // namespace whisperd
