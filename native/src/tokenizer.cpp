#include "tokenizer.hpp"

#include <cstring>

#include "whisper.h"

namespace whisperd {

namespace {

bool is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool is_other(unsigned char c) { return !is_space(c) && !is_alpha(c) && !is_digit(c); }

template <typename Pred>
size_t run(const std::string &s, size_t i, Pred pred) {
    while (i < s.size() && pred(static_cast<unsigned char>(s[i]))) {
        ++i;
    }
    return i;
}

// Length of the word starting at i (never 0: every byte belongs to one alternative).
size_t word_length(const std::string &s, size_t i) {
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (const char *c : contractions) {
        if (s.compare(i, strlen(c), c) == 0) {
            return strlen(c);
        }
    }
    const size_t n = s.size();
    // " ?X+": the optional space is taken only when the class follows it.
    for (auto pred : {is_alpha, is_digit, is_other}) {
        for (size_t j : {i + (s[i] == ' ' ? 1 : 0), i}) {
            if (j < n && pred(static_cast<unsigned char>(s[j]))) {
                return run(s, j, pred) - i;
            }
        }
    }
    // Whitespace: "\s+(?!\S)" leaves the last space of a run to the word after it;
    // a single space before a word falls to "\s+".
    const size_t k = run(s, i, is_space);
    if (k == n || k - i < 2) {
        return k - i;
    }
    return k - i - 1;
}

}  // namespace

Tokenizer::Tokenizer(whisper_context *ctx) {
    // Later ids win a text that two share, as in whisper.cpp's own map.
    const int n = whisper_n_vocab(ctx);
    ids_.reserve(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) {
        const char *s = whisper_token_to_str(ctx, t);
        if (s != nullptr) {
            ids_[s] = t;
        }
    }
}

std::vector<std::string> Tokenizer::split(const std::string &text) {
    std::vector<std::string> words;
    for (size_t i = 0; i < text.size();) {
        const size_t len = word_length(text, i);
        words.push_back(text.substr(i, len));
        i += len;
    }
    return words;
}

std::vector<int> Tokenizer::encode(const std::string &text) const {
    std::vector<int> tokens;
    for (const std::string &word : split(text)) {
        size_t i = 0;
        while (i < word.size()) {
            size_t j = word.size();
            for (; j > i; --j) {
                const auto it = ids_.find(word.substr(i, j - i));
                if (it != ids_.end()) {
                    tokens.push_back(it->second);
                    break;
                }
            }
            i = j > i ? j : i + 1;  // a byte no entry spells is skipped, as whisper.cpp does
        }
    }
    return tokens;
}

}  // namespace whisperd
