// What engine.cpp and vad_spans.cpp both need; internal to the module (engine.hpp is the
// interface the bindings see).
#pragma once

#include <thread>

namespace whisperd {

inline constexpr int kSampleRate = 16000;

inline int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 4 : static_cast<int>(n);
}

}  // namespace whisperd
