// Routes whisper.cpp and ggml log lines to a Python callable instead of stderr, and lets
// a native call collect the error lines it caused so that its exception can quote them.
#pragma once

#include <string>
#include <vector>

namespace whisperd {

// Install the bridge; `sink` is called as sink(level: int, line: str) with the GIL held.
// Passing None restores silence (lines are dropped, never printed to stderr).
void set_log_sink(void *py_callable_or_null);

// While set on a thread, whisper.cpp's error lines are logged as debug: they are the
// expected "failed to encode/decode" of a transcription that was asked to stop.
void set_stopping(bool stopping);

// Records a line in this thread's active LogCapture, if any.
void capture_line(const std::string &line);

// Collects warning and error lines logged by this thread while alive.
class LogCapture {
public:
    LogCapture();
    ~LogCapture();
    LogCapture(const LogCapture &) = delete;
    LogCapture &operator=(const LogCapture &) = delete;

    const std::vector<std::string> &lines() const { return lines_; }
    bool mentions_out_of_memory() const;
    // The last few lines joined, for an exception message.
    std::string summary(size_t max_lines = 3) const;

private:
    friend void capture_line(const std::string &line);
    std::vector<std::string> lines_;
    LogCapture *previous_;
};

}  // namespace whisperd
