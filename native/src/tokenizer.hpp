// Text to Whisper tokens as whisper.cpp's whisper_tokenize does it (GPT-2's word split, then
// the longest vocabulary entries that spell each word), without std::regex: its regex
// crashed inside the C++ runtime of a GPU host whenever a job had a prompt.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

struct whisper_context;

namespace whisperd {

class Tokenizer {
public:
    explicit Tokenizer(whisper_context *ctx);
    std::vector<int> encode(const std::string &text) const;
    // GPT-2's pattern, 's|'t|'re|'ve|'m|'ll|'d| ?[[:alpha:]]+| ?[[:digit:]]+|
    // ?[^\s[:alpha:][:digit:]]+|\s+(?!\S)|\s+ with ASCII classes (std::regex's "C" locale).
    static std::vector<std::string> split(const std::string &text);

private:
    std::unordered_map<std::string, int> ids_;
};

}  // namespace whisperd
