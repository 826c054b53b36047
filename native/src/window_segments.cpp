// The segments of a finished window: text split at timestamp tokens, token times shared
// out by text length. Apart from window_decoder.cpp: it builds the result, not the search.
#include "window_decoder.hpp"

#include <algorithm>
#include <string>

namespace whisperd {

void WindowDecoder::finish_segments(const Seq &best) {
    phase_ = Phase::Done;
    finished_ = true;
    rows_.clear();
    out_.end_cs = std::min(best.seek_delta, seek_end_);
    const bool no_speech = out_.no_speech_prob > spec_.no_speech_threshold &&
                           best.avg_logprobs < spec_.logprob_threshold;
    const auto &toks = best.tokens;
    if (no_speech || toks.empty()) {
        return;
    }
    for (const Tok &t : toks) {
        if (t.id < v_.eot) {
            out_.text_tokens.push_back(t.id);
        }
    }
    auto emit = [&](int64_t t0, int64_t t1, const std::string &text, int i0, int i1) {
        SegmentData seg;
        seg.index = static_cast<int>(out_.segments.size());
        seg.t0 = t0;
        seg.t1 = t1;
        seg.text = text;
        seg.no_speech_prob = out_.no_speech_prob;
        // Token times: the segment's span shared out by the length of each token's text
        // (the batched path has no alignment heads; words come out monotone).
        size_t total = 0;
        for (int j = i0; j < i1; ++j) {
            if (toks[j].id < v_.eot) {
                total += std::max<size_t>(1, v_.text(toks[j].id).size());
            }
        }
        size_t acc = 0;
        for (int j = i0; j < i1; ++j) {
            Token tk;
            tk.id = toks[j].id;
            tk.p = toks[j].p;
            if (toks[j].id < v_.eot) {
                tk.text = v_.text(toks[j].id);
                const size_t len = std::max<size_t>(1, tk.text.size());
                tk.t0 = t0 + (total ? (t1 - t0) * static_cast<int64_t>(acc) / static_cast<int64_t>(total) : 0);
                acc += len;
                tk.t1 = t0 + (total ? (t1 - t0) * static_cast<int64_t>(acc) / static_cast<int64_t>(total) : 0);
            } else {
                tk.t0 = tk.t1 = t0;
            }
            seg.tokens.push_back(std::move(tk));
        }
        out_.segments.push_back(std::move(seg));
    };
    int i0 = 0;
    int64_t t0 = 2 * (toks.front().tid - v_.beg);
    std::string text;
    for (int i = 0; i < static_cast<int>(toks.size()); ++i) {
        if (toks[i].id < v_.eot) {
            text += v_.text(toks[i].id);
        }
        if (toks[i].id > v_.beg) {
            const int64_t t1 = 2 * (toks[i].tid - v_.beg);
            if (!text.empty()) {
                emit(t0, t1, text, i0, i + 1);
            }
            text.clear();
            t0 = t1;
            while (i + 1 < static_cast<int>(toks.size()) && toks[i + 1].id > v_.beg) {
                ++i;
                t0 = 2 * (toks[i].tid - v_.beg);
            }
            i0 = i + 1;
        }
    }
    if (!text.empty()) {
        emit(t0, std::max<int64_t>(t0, std::min(best.seek_delta, seek_end_)), text, i0,
             static_cast<int>(toks.size()));
    }
}

WindowOutput WindowDecoder::result() const { return out_; }

}  // namespace whisperd
