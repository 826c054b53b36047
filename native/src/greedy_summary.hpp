// Greedy decoding (temperature 0, one sequence) needs a handful of numbers of a row's
// logits, not the logits: the log-sum-exp of the tokens Whisper's rules allow, the best
// allowed text token and the best allowed timestamp with their logits, and the
// log-sum-exp of the allowed timestamps. From those greedy_token() takes the token that
// WindowDecoder::process_logits + sample_best take from the whole row. On a GPU the
// summary is computed where the logits are (cuda_sampler.hpp) and only it crosses the
// bus: 32 bytes a row instead of 4 x n_vocab (200 kB for large-v3). This file is the CPU
// version and the reference the CUDA kernel is tested against; greedy_summary.cpp also
// holds WindowDecoder's side of it (greedy_mask, feed_greedy).
#pragma once

#include <cstdint>
#include <vector>

namespace whisperd {

struct Vocab;

// flags of a GreedyMask
constexpr int32_t kMaskTextOff = 1;  // text tokens [0, eot) suppressed (timestamps come in pairs)
constexpr int32_t kMaskInitial = 2;  // the first token of a sequence: neither eot nor a space
constexpr int32_t kMaskRaw = 4;      // also summarise the unmasked row (the no-speech probability)

// What process_logits leaves of a row at temperature 0, besides the model's fixed
// suppressed specials (GreedyVocab). Plain data: the CUDA sampler uploads it as it is.
struct GreedyMask {
    int32_t flags = 0;
    int32_t ts_lo = 0, ts_hi = 0;  // the timestamps allowed: [ts_lo, ts_hi), none when ts_lo >= ts_hi
    int32_t forced = -1;           // >= 0: the only candidate, with logit 0 (benchmarks' forced tokens)
};

// A row's summary. Ids are -1 where no token of that kind is allowed; a max-logit tie
// goes to the lowest id, as sample_best's `>` scan.
struct GreedySummary {
    float lse = 0;         // log-sum-exp of every allowed token's logit
    int32_t text_id = -1;  // best allowed token below beg (text, eot and other specials)
    float text_logit = 0;
    int32_t ts_id = -1;    // best allowed timestamp
    float ts_logit = 0;
    float ts_lse = 0;      // log-sum-exp of the allowed timestamps
    float raw_lse = 0;     // kMaskRaw: log-sum-exp of the whole row as it came
    float nosp_logit = 0;  // kMaskRaw: <|nospeech|>'s logit
};

// The model's constants the rules need.
struct GreedyVocab {
    explicit GreedyVocab(const Vocab &v);
    int n_vocab, eot, beg, space, nosp;
    std::vector<uint8_t> special_off;  // [eot, beg): 1 = always suppressed (sot, languages, ...)
};

GreedySummary greedy_summary(const GreedyVocab &v, const GreedyMask &m, const float *logits);

// The token sample_best takes, and timestamp_stats' tid and pt.
struct GreedyToken {
    int id, tid;
    float p, plog, pt;
};
GreedyToken greedy_token(const GreedySummary &s, int beg);

// softmax(row)[nosp], from a kMaskRaw summary.
float greedy_no_speech(const GreedySummary &s);

}  // namespace whisperd
