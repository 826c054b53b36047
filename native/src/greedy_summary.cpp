#include "greedy_summary.hpp"

#include <algorithm>
#include <cmath>

#include "errors.hpp"
#include "window_decoder.hpp"

namespace whisperd {

GreedyVocab::GreedyVocab(const Vocab &v)
    : n_vocab(v.n_vocab), eot(v.eot), beg(v.beg), space(v.space), nosp(v.nosp) {
    special_off.assign(beg - eot, 0);
    std::vector<int> fixed = {v.not_ts, v.sot, v.nosp, v.solm, v.translate, v.transcribe, v.prev};
    fixed.insert(fixed.end(), v.lang_tokens.begin(), v.lang_tokens.end());
    for (int t : fixed) {
        // Every Whisper vocabulary keeps its specials between eot and the timestamps; the
        // summary (and the CUDA kernel) only look for them there.
        if (t < eot || t >= beg) {
            throw WhisperError("unexpected special token " + std::to_string(t) + " outside [eot, beg)");
        }
        special_off[t - eot] = 1;
    }
}

namespace {

constexpr float kNegInf = -INFINITY;

// Best logit of x[lo, hi) (first on ties), skipping `skip`.
void scan_max(const float *x, int lo, int hi, int skip, float &best, int32_t &id) {
    for (int i = lo; i < hi; ++i) {
        if (x[i] > best && i != skip) {
            best = x[i];
            id = i;
        }
    }
}

double sum_exp(const float *x, int lo, int hi, int skip, float m) {
    double s = 0.0;
    for (int i = lo; i < hi; ++i) {
        if (i != skip) {
            s += expf(x[i] - m);
        }
    }
    return s;
}

}  // namespace

GreedySummary greedy_summary(const GreedyVocab &v, const GreedyMask &m, const float *x) {
    GreedySummary s;
    s.lse = s.text_logit = s.ts_logit = s.ts_lse = kNegInf;
    if (m.flags & kMaskRaw) {
        const float mx = *std::max_element(x, x + v.n_vocab);
        s.raw_lse = mx + static_cast<float>(std::log(sum_exp(x, 0, v.n_vocab, -1, mx)));
        s.nosp_logit = x[v.nosp];
    }
    const bool initial = (m.flags & kMaskInitial) != 0;
    const bool text_on = (m.flags & kMaskTextOff) == 0;
    const int ts_lo = std::max(m.ts_lo, v.beg), ts_hi = std::min(m.ts_hi, v.n_vocab);
    if (m.forced >= 0) {
        // process_logits' forced tokens replace the fixed suppressions; the timestamp
        // rules still apply after them.
        const int t = m.forced;
        const bool ok = t < v.eot ? text_on : t < v.beg || (t >= ts_lo && t < ts_hi);
        if (ok) {
            s.lse = 0.0f;
            if (t < v.beg) {
                s.text_id = t;
                s.text_logit = 0.0f;
            } else {
                s.ts_id = t;
                s.ts_logit = s.ts_lse = 0.0f;
            }
        }
        return s;
    }
    const int space = initial ? v.space : -1;
    if (text_on) {
        scan_max(x, 0, v.eot, space, s.text_logit, s.text_id);
    }
    for (int i = v.eot; i < v.beg; ++i) {
        if (!v.special_off[i - v.eot] && !(initial && i == v.eot) && x[i] > s.text_logit) {
            s.text_logit = x[i];
            s.text_id = i;
        }
    }
    scan_max(x, ts_lo, ts_hi, -1, s.ts_logit, s.ts_id);
    const float mx = std::max(s.text_logit, s.ts_logit);
    if (mx == kNegInf) {
        return s;  // nothing allowed (or every allowed logit -inf)
    }
    double sum = 0.0;
    if (text_on) {
        sum += sum_exp(x, 0, v.eot, space, mx);
    }
    for (int i = v.eot; i < v.beg; ++i) {
        if (!v.special_off[i - v.eot] && !(initial && i == v.eot)) {
            sum += expf(x[i] - mx);
        }
    }
    if (s.ts_id >= 0) {
        sum += sum_exp(x, ts_lo, ts_hi, -1, mx);
        s.ts_lse = s.ts_logit + static_cast<float>(std::log(sum_exp(x, ts_lo, ts_hi, -1, s.ts_logit)));
    }
    s.lse = mx + static_cast<float>(std::log(sum));
    return s;
}

GreedyToken greedy_token(const GreedySummary &s, int beg) {
    GreedyToken t{0, beg, 0.0f, kNegInf, 0.0f};
    if (s.lse == kNegInf) {
        return t;  // as sample_best over a row of -inf
    }
    // process_logits in log-probabilities: when the timestamps together are likelier than
    // the best text token, text is suppressed (and nothing is renormalised).
    const float text_lp = s.text_id >= 0 ? s.text_logit - s.lse : kNegInf;
    const float ts_lp = s.ts_id >= 0 ? s.ts_lse - s.lse : kNegInf;
    if (s.ts_id >= 0) {
        // timestamp_stats: the likeliest timestamp's share of all the timestamps' mass
        t.tid = s.ts_id;
        const double max_p = std::exp(static_cast<double>(s.ts_logit - s.lse));
        const double sum_p = std::exp(static_cast<double>(ts_lp));
        t.pt = static_cast<float>(max_p / (sum_p + 1e-10));
    }
    if (ts_lp > text_lp) {
        t.id = s.ts_id;
        t.plog = s.ts_logit - s.lse;
    } else {
        // text_lp >= ts_lp >= every timestamp's: the best text token is the best token
        t.id = s.text_id;
        t.plog = text_lp;
    }
    t.p = expf(t.plog);
    if (t.id >= beg) {
        t.tid = t.id;
        t.pt = t.p;
    }
    return t;
}

float greedy_no_speech(const GreedySummary &s) {
    return static_cast<float>(std::exp(static_cast<double>(s.nosp_logit) - s.raw_lse));
}

// ---------------------------------------------------------------- WindowDecoder's greedy path
// (here rather than in window_decoder.cpp, which holds the full-row rules they mirror)

bool WindowDecoder::greedy() const {
    return (phase_ == Phase::Prompt || phase_ == Phase::Decode) && temperatures_[attempt_] <= 0.0f &&
           seqs_.size() == 1;
}

// process_logits' rules for the one sequence, as a GreedyMask (keep the two in step).
GreedyMask WindowDecoder::greedy_mask() const {
    const Seq &s = seqs_[0];
    GreedyMask m;
    m.ts_lo = v_.beg;
    m.ts_hi = v_.n_vocab;
    const size_t k = s.tokens.size();
    if (k == 0) {
        m.flags |= kMaskInitial;
        m.ts_hi = std::min(m.ts_hi, v_.beg + kMaxInitialTsTokens + 1);
    }
    if (phase_ == Phase::Prompt) {
        m.flags |= kMaskRaw;  // the no-speech probability
    }
    if (spec_.forced_tokens > 0) {
        m.forced = forced_token(s);
    }
    const bool last_ts = k > 0 && s.tokens.back().id >= v_.beg;
    const bool penult_ts = k < 2 || s.tokens[k - 2].id >= v_.beg;
    if (last_ts) {
        if (penult_ts) {
            m.ts_hi = v_.beg;
        } else {
            m.flags |= kMaskTextOff;
        }
    }
    if (s.has_ts) {
        m.ts_lo = v_.beg + s.seek_delta / 2;
    }
    return m;
}

void WindowDecoder::feed_greedy(const GreedySummary &summary) {
    if (phase_ == Phase::Prompt) {
        out_.no_speech_prob = greedy_no_speech(summary);
        phase_ = Phase::Decode;
        row_seq_ = {0};
    }
    const GreedyToken g = greedy_token(summary, v_.beg);
    Seq &s = seqs_[0];
    s.tokens.push_back(Tok{g.id, g.tid, g.p, g.plog, g.pt});
    s.sum_logprobs_all += g.plog;
    out_.n_tokens++;
    advance();
}

}  // namespace whisperd
