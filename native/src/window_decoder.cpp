#include "window_decoder.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "whisper.h"

namespace whisperd {

namespace {

constexpr float kPromptTempCutoff = 0.5f; // no conditioning text above this temperature
constexpr int kEntropyWindow = 32;

}  // namespace

Vocab::Vocab(whisper_context *c) : ctx(c) {
    n_vocab = whisper_n_vocab(c);
    eot = whisper_token_eot(c);
    sot = whisper_token_sot(c);
    prev = whisper_token_prev(c);
    solm = whisper_token_solm(c);
    not_ts = whisper_token_not(c);
    beg = whisper_token_beg(c);
    nosp = whisper_token_nosp(c);
    translate = whisper_token_translate(c);
    transcribe = whisper_token_transcribe(c);
    multilingual = whisper_is_multilingual(c) != 0;
    // The token of a lone space, looked up by its text: whisper_tokenize's std::regex
    // crashed in one host's C++ runtime, and this needs no regex.
    space = -1;
    for (int t = 0; t < eot; ++t) {
        const char *s = whisper_token_to_str(c, t);
        if (s != nullptr && s[0] == ' ' && s[1] == '\0') {
            space = t;
            break;
        }
    }
    for (int i = 0; i <= whisper_lang_max_id(); ++i) {
        lang_tokens.push_back(whisper_token_lang(c, i));
    }
}

std::string Vocab::text(int token) const {
    const char *s = whisper_token_to_str(ctx, token);
    return s == nullptr ? std::string() : std::string(s);
}

WindowDecoder::WindowDecoder(const Vocab &vocab, WindowSpec spec, int n_cells, int n_text_ctx)
    : v_(vocab), spec_(std::move(spec)), n_cells_(n_cells) {
    n_max0_ = n_text_ctx / 2 - 4;
    n_max_ = n_max0_;
    seek_end_ = static_cast<int>(spec_.samples.size() / 160);
    if (spec_.forced_tokens > 0) {
        spec_.temperature_increment = 0.0f;  // nothing to fall back from
    }
    if (spec_.temperature_increment > 0.0f) {
        for (float t = spec_.temperature; t < 1.0f + 1e-6f; t += spec_.temperature_increment) {
            temperatures_.push_back(t);
        }
    }
    if (temperatures_.empty()) {
        temperatures_.push_back(spec_.temperature);
    }
    out_.id = spec_.id;
    if (!spec_.language.empty()) {
        lang_id_ = whisper_lang_id(spec_.language.c_str());
        out_.language = spec_.language;
        out_.language_probability = 1.0f;
    } else if (!v_.multilingual) {
        lang_id_ = whisper_lang_id("en");
        out_.language = "en";
        out_.language_probability = 1.0f;
    }
    if (lang_id_ < 0 && v_.multilingual) {
        phase_ = Phase::Detect;
        next_cell_ = 0;
        prompt_ = {v_.sot};
        prompt_cells_ = {new_cell()};
        prompt_visible_ = {prompt_cells_};
        rows_ = {Row{v_.sot, 0, prompt_cells_[0], &prompt_visible_[0], true}};
    } else {
        start_attempt();
    }
}

int WindowDecoder::new_cell() { return next_cell_++; }

void WindowDecoder::start_attempt() {
    const float t = temperatures_[attempt_];
    const int n_seq = t > 0.0f ? std::max(1, spec_.best_of) : std::max(1, spec_.beam_size);
    next_cell_ = 0;
    prompt_.clear();
    if (!spec_.prompt_tokens.empty() && t < kPromptTempCutoff) {
        // The last tokens of the conditioning text, as many as whisper.cpp takes (half
        // the context) and as leave every sequence room for a whole window's tokens.
        const int room = n_cells_ - 1 - 4 - n_seq * n_max0_;
        const int take = std::min<int>({n_max0_ + 4 - 1, static_cast<int>(spec_.prompt_tokens.size()),
                                        std::max(0, room)});
        if (take > 0) {
            prompt_.push_back(v_.prev);
            prompt_.insert(prompt_.end(), spec_.prompt_tokens.end() - take, spec_.prompt_tokens.end());
        }
    }
    prompt_.push_back(v_.sot);
    if (v_.multilingual) {
        prompt_.push_back(v_.lang_tokens[lang_id_]);
        prompt_.push_back(spec_.translate ? v_.translate : v_.transcribe);
    }
    const int n = static_cast<int>(prompt_.size());
    prompt_cells_.clear();
    prompt_visible_.assign(n, {});
    rows_.clear();
    for (int i = 0; i < n; ++i) {
        prompt_cells_.push_back(new_cell());
        prompt_visible_[i].assign(prompt_cells_.begin(), prompt_cells_.end());
    }
    for (int i = 0; i < n; ++i) {
        rows_.push_back(Row{prompt_[i], i, prompt_cells_[i], &prompt_visible_[i], i == n - 1});
    }
    seqs_.assign(n_seq, Seq{});
    for (int j = 0; j < n_seq; ++j) {
        seqs_[j].cells = prompt_cells_;
        seqs_[j].rng = std::mt19937(j);
    }
    // Every sequence takes a cell per token: stop before the pool runs out.
    n_max_ = std::min(n_max0_, (n_cells_ - 1 - n) / n_seq);
    step_ = 0;
    phase_ = Phase::Prompt;
}

namespace {

void timestamp_stats(const std::vector<float> &logprobs, int beg, int &tid, float &pt) {
    double sum = 0.0, mx = 0.0;
    tid = beg;
    for (size_t i = beg; i < logprobs.size(); ++i) {
        if (logprobs[i] == -INFINITY) {
            continue;
        }
        const double p = std::exp(logprobs[i]);
        sum += p;
        if (mx < p) {
            mx = p;
            tid = static_cast<int>(i);
        }
    }
    pt = static_cast<float>(mx / (sum + 1e-10));
}

// Probabilities from log-probabilities; suppressed tokens (-inf) get 0.
void to_probs(const std::vector<float> &logprobs, std::vector<float> &probs) {
    probs.resize(logprobs.size());
    for (size_t i = 0; i < probs.size(); ++i) {
        probs[i] = logprobs[i] == -INFINITY ? 0.0f : expf(logprobs[i]);
    }
}

}  // namespace

WindowDecoder::Tok WindowDecoder::sample_best(const std::vector<float> &logprobs) const {
    Tok t{0, v_.beg, 0.0f, 0.0f, 0.0f};
    timestamp_stats(logprobs, v_.beg, t.tid, t.pt);
    float best = -INFINITY;
    for (int i = 0; i < v_.n_vocab; ++i) {
        if (logprobs[i] > best) {
            best = logprobs[i];
            t.id = i;
        }
    }
    t.plog = best;
    t.p = expf(best);
    if (t.id >= v_.beg) {
        t.tid = t.id;
        t.pt = t.p;
    }
    return t;
}

WindowDecoder::Tok WindowDecoder::sample_random(const std::vector<float> &logprobs,
                                                std::mt19937 &rng) const {
    Tok t{0, v_.beg, 0.0f, 0.0f, 0.0f};
    timestamp_stats(logprobs, v_.beg, t.tid, t.pt);
    std::vector<float> probs;
    to_probs(logprobs, probs);
    std::discrete_distribution<> dist(probs.begin(), probs.end());
    t.id = dist(rng);
    t.p = probs[t.id];
    t.plog = logprobs[t.id];
    if (t.id >= v_.beg) {
        t.tid = t.id;
        t.pt = t.p;
    }
    return t;
}

void WindowDecoder::feed(const std::vector<const float *> &logits) {
    if (phase_ == Phase::Detect) {
        // Language: the likeliest language token after <|startoftranscript|>.
        const float *raw = logits.at(0);
        float mx = -INFINITY;
        for (int t : v_.lang_tokens) {
            mx = std::max(mx, raw[t]);
        }
        double sum = 0.0;
        for (int t : v_.lang_tokens) {
            sum += std::exp(raw[t] - mx);
        }
        int best = 0;
        for (size_t i = 0; i < v_.lang_tokens.size(); ++i) {
            if (raw[v_.lang_tokens[i]] > raw[v_.lang_tokens[best]]) {
                best = static_cast<int>(i);
            }
        }
        lang_id_ = best;
        out_.language = whisper_lang_str(best);
        out_.language_probability = static_cast<float>(std::exp(raw[v_.lang_tokens[best]] - mx) / sum);
        start_attempt();
        return;
    }
    const float temperature = temperatures_[attempt_];
    std::vector<float> lg, lp;
    if (phase_ == Phase::Prompt) {
        const float *raw = logits.at(0);
        // No-speech probability: the plain softmax of the prompt's last position.
        const float mx = *std::max_element(raw, raw + v_.n_vocab);
        double sum = 0.0;
        for (int i = 0; i < v_.n_vocab; ++i) {
            sum += std::exp(raw[i] - mx);
        }
        out_.no_speech_prob = static_cast<float>(std::exp(raw[v_.nosp] - mx) / sum);
        phase_ = Phase::Decode;
        // Every sequence starts from the same prompt, hence the same logits.
        std::vector<const float *> same(seqs_.size(), raw);
        row_seq_.resize(seqs_.size());
        std::iota(row_seq_.begin(), row_seq_.end(), 0);
        feed(same);
        return;
    }
    // Decode: one output row per live sequence, in row_seq_ order.
    const bool beam = temperature <= 0.0f && seqs_.size() > 1;
    if (!beam) {
        for (size_t r = 0; r < row_seq_.size(); ++r) {
            Seq &s = seqs_[row_seq_[r]];
            process_logits(s, logits[r], temperature, lg, lp);
            Tok t = temperature > 0.0f ? sample_random(lp, s.rng) : sample_best(lp);
            s.tokens.push_back(t);
            s.sum_logprobs_all += t.plog;
            out_.n_tokens++;
        }
    } else {
        // whisper.cpp 1.8.5's beam search, step for step, so a window decodes as it does
        // there: each live beam draws beam_size tokens from its distribution with its own
        // generator; the candidates, best total log-probability first, are dealt to the
        // beams in turn, skipping a copy of the sequence just dealt (from the second step).
        struct Cand {
            int parent;
            Tok tok;
            double sum;
        };
        std::vector<Cand> cands;
        const int k = static_cast<int>(seqs_.size());
        std::vector<float> probs;
        for (size_t r = 0; r < row_seq_.size(); ++r) {
            const int j = row_seq_[r];
            Seq &s = seqs_[j];
            process_logits(s, logits[r], temperature, lg, lp);
            int tid;
            float pt;
            timestamp_stats(lp, v_.beg, tid, pt);
            to_probs(lp, probs);
            std::discrete_distribution<> dist(probs.begin(), probs.end());
            for (int c = 0; c < k; ++c) {
                const int id = dist(s.rng);
                Tok t{id, tid, probs[id], lp[id], pt};
                if (id >= v_.beg) {
                    t.tid = id;
                    t.pt = t.p;
                }
                cands.push_back({j, t, s.sum_logprobs_all + t.plog});
            }
        }
        std::sort(cands.begin(), cands.end(), [](const Cand &a, const Cand &b) {
            return a.sum != b.sum ? a.sum > b.sum : a.parent < b.parent;
        });
        auto same_seq = [&](const Cand &a, const Cand &b) {
            const auto &ta = seqs_[a.parent].tokens, &tb = seqs_[b.parent].tokens;
            if (ta.size() != tb.size() || a.tok.id != b.tok.id) {
                return false;
            }
            for (size_t i = 0; i < ta.size(); ++i) {
                if (ta[i].id != tb[i].id) {
                    return false;
                }
            }
            return true;
        };
        std::vector<Seq> next = seqs_;
        size_t c = 0;
        for (int j : row_seq_) {
            if (c >= cands.size()) {
                c = 0;
            }
            const Cand &cur = cands[c++];
            while (cands.size() > c && same_seq(cands[c], cur) && step_ > 0) {
                ++c;
            }
            Seq s = seqs_[cur.parent];
            s.rng = seqs_[j].rng;
            s.tokens.push_back(cur.tok);
            s.sum_logprobs_all = cur.sum;
            next[j] = std::move(s);
            out_.n_tokens++;
        }
        seqs_ = std::move(next);
    }
    advance();
}

// After a token per live sequence: the decoding rules, then the next rows or the end.
void WindowDecoder::advance() {
    for (int j : row_seq_) {
        if (!seqs_[j].failed) {
            after_token(seqs_[j], step_);
        }
    }
    ++step_;
    const bool all_done = std::all_of(seqs_.begin(), seqs_.end(),
                                      [](const Seq &s) { return s.completed || s.failed; });
    if (all_done || step_ >= n_max_) {
        end_attempt();
        return;
    }
    build_rows();
}

void WindowDecoder::build_rows() {
    rows_.clear();
    row_seq_.clear();
    const int pos = static_cast<int>(prompt_.size()) + step_ - 1;
    for (size_t j = 0; j < seqs_.size(); ++j) {
        Seq &s = seqs_[j];
        if (s.completed || s.failed) {
            continue;
        }
        const int cell = new_cell();
        s.cells.push_back(cell);
        rows_.push_back(Row{s.tokens.back().id, pos, cell, &s.cells, true});
        row_seq_.push_back(static_cast<int>(j));
    }
}

void WindowDecoder::end_attempt() {
    double best_score = -INFINITY;
    int best = 0;
    for (size_t j = 0; j < seqs_.size(); ++j) {
        Seq &s = seqs_[j];
        if (s.failed) {
            continue;
        }
        if (s.result_len == 0) {
            s.result_len = static_cast<int>(s.tokens.size());
        }
        s.tokens.resize(s.result_len);
        if (s.result_len == 0) {
            continue;
        }
        double sum = 0.0;
        for (const Tok &t : s.tokens) {
            sum += t.plog;
        }
        s.avg_logprobs = sum / s.result_len;
        s.score = sum / s.result_len;  // length penalty off: the mean, as whisper.cpp
        std::map<int, int> counts;
        int cnt = 0;
        for (int i = std::max(0, s.result_len - kEntropyWindow); i < s.result_len; ++i) {
            counts[s.tokens[i].id]++;
            cnt++;
        }
        double entropy = 0.0;
        for (const auto &kv : counts) {
            const double p = kv.second / static_cast<double>(cnt);
            entropy -= p * std::log(p);
        }
        s.entropy = entropy;
        if (s.result_len > kEntropyWindow && entropy < spec_.entropy_threshold) {
            s.failed = true;
            continue;
        }
        if (best_score < s.score) {
            best_score = s.score;
            best = static_cast<int>(j);
        }
    }
    const Seq &b = seqs_[best];
    const bool last = attempt_ + 1 >= static_cast<int>(temperatures_.size());
    if (!last && (b.failed || (b.avg_logprobs < spec_.logprob_threshold &&
                               out_.no_speech_prob < spec_.no_speech_threshold))) {
        ++attempt_;
        ++out_.n_fallbacks;
        start_attempt();
        return;
    }
    finish_segments(b);
}

}  // namespace whisperd
