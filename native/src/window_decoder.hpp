// Decoding one window (<= 30 s) token by token from logits the batched graph computes:
// Whisper's logit rules (timestamp pairs, suppressed specials, the initial timestamp),
// greedy, sampling with best-of, beam search, temperature fallback, no-speech and the
// segments of the result. Knows nothing about graphs or memory: the batch decoder asks it
// which tokens to feed next (rows) and hands it the logits of the rows it asked for.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine.hpp"
#include "greedy_summary.hpp"

struct whisper_context;

namespace whisperd {

// The special tokens of a loaded model, read once.
struct Vocab {
    explicit Vocab(whisper_context *ctx);
    int n_vocab, eot, sot, prev, solm, not_ts, beg, nosp, translate, transcribe, space;
    bool multilingual;
    std::vector<int> lang_tokens;  // index = whisper.cpp language id
    whisper_context *ctx;
    std::string text(int token) const;
};

struct WindowSpec {
    int64_t id = 0;
    std::vector<float> samples;      // 16 kHz mono, at most 30 s
    std::vector<float> mel;          // its log-mel frames when prepared ahead (BatchDecoder::prepare)
    std::string language;            // empty = detect on this window
    bool translate = false;
    int beam_size = 1;
    int best_of = 5;
    float temperature = 0.0f;
    float temperature_increment = 0.2f;
    float no_speech_threshold = 0.6f;
    float logprob_threshold = -1.0f;
    float entropy_threshold = 2.4f;
    std::vector<int> prompt_tokens;  // conditioning text (without <|startofprev|>)
    bool suppress_nst = false;
    int forced_tokens = 0;           // benchmarks: exactly this many tokens (random weights)
};

struct WindowOutput {
    int64_t id = 0;
    std::vector<SegmentData> segments;  // centiseconds from the window's start
    std::string language;
    float language_probability = 0.0f;
    float no_speech_prob = 0.0f;
    int n_tokens = 0;    // decoded, every attempt
    int n_fallbacks = 0;
    int64_t end_cs = 0;  // how far into the window the result reaches
    std::vector<int> text_tokens;
};

// One row of the next decoder step: a token at a position, written to a KV cell, seeing
// the listed cells (its own included).
struct Row {
    int token;
    int pos;
    int cell;
    const std::vector<int> *visible;  // owned by the window; valid until the next feed
    bool output;                      // its logits are wanted
};

class WindowDecoder {
public:
    WindowDecoder(const Vocab &vocab, WindowSpec spec, int n_cells, int n_text_ctx);

    // The rows to compute in the next step (empty when finished).
    const std::vector<Row> &rows() const { return rows_; }
    // Logits of this window's output rows, in the order rows() listed them.
    void feed(const std::vector<const float *> &logits);
    // Greedy decoding (temperature 0, one sequence; not language detection): the next
    // feed needs only a summary of its one output row's logits, masked by greedy_mask().
    bool greedy() const;
    GreedyMask greedy_mask() const;
    void feed_greedy(const GreedySummary &summary);
    bool finished() const { return finished_; }
    WindowOutput result() const;
    int cells_used() const { return next_cell_; }
    int64_t id() const { return spec_.id; }
    float seconds() const { return spec_.samples.size() / 16000.0f; }

private:
    static constexpr int kMaxInitialTsTokens = 50;  // the first timestamp: at most 1 s (0.02 s a token)
    struct Tok {
        int id;
        int tid;       // most likely timestamp token
        float p, plog, pt;
    };
    struct Seq {
        std::vector<Tok> tokens;
        std::vector<int> cells;  // prompt cells + one per token fed
        double sum_logprobs_all = 0;
        double score = -INFINITY;
        double avg_logprobs = -INFINITY;
        double entropy = 0;
        int result_len = 0;
        int seek_delta = 3000;
        bool has_ts = false, completed = false, failed = false;
        std::mt19937 rng;
    };
    enum class Phase { Detect, Prompt, Decode, Done };

    void start_attempt();
    void start_prompt();
    void process_logits(const Seq &s, const float *raw, float temperature,
                        std::vector<float> &logits, std::vector<float> &logprobs) const;
    Tok sample_best(const std::vector<float> &logprobs) const;
    Tok sample_random(const std::vector<float> &logprobs, std::mt19937 &rng) const;
    int forced_token(const Seq &s) const;
    void forced(const Seq &s, std::vector<float> &logits) const;
    void advance();
    void after_token(Seq &s, int step);
    void end_attempt();
    void build_rows();
    void finish_segments(const Seq &best);
    int new_cell();

    const Vocab &v_;
    WindowSpec spec_;
    int n_cells_;
    int n_max0_;      // tokens per attempt, as whisper.cpp allows
    int n_max_;       // ... as this attempt's cells allow
    int seek_end_;    // window length, centiseconds
    std::vector<float> temperatures_;
    int attempt_ = 0;
    Phase phase_ = Phase::Prompt;
    std::vector<int> prompt_;
    std::vector<int> prompt_cells_;
    std::vector<std::vector<int>> prompt_visible_;
    std::vector<Seq> seqs_;
    int step_ = 0;
    int next_cell_ = 0;
    std::vector<Row> rows_;
    std::vector<int> row_seq_;  // which sequence each output row belongs to
    bool finished_ = false;
    WindowOutput out_;
    int lang_id_ = -1;
};

}  // namespace whisperd
