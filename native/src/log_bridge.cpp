#include "log_bridge.hpp"

#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <mutex>

#include "ggml.h"
#include "whisper.h"

namespace whisperd {

namespace {

std::mutex g_sink_mutex;
PyObject *g_sink = nullptr;  // strong reference, guarded by g_sink_mutex

thread_local LogCapture *t_capture = nullptr;
thread_local std::string t_pending;          // a line not yet ended by '\n'
thread_local int t_pending_level = GGML_LOG_LEVEL_INFO;
thread_local bool t_stopping = false;

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}

void emit(int level, const std::string &line) {
    if (line.empty()) {
        return;
    }
    if (t_stopping && level >= GGML_LOG_LEVEL_WARN) {
        level = GGML_LOG_LEVEL_DEBUG;
    }
    if (level >= GGML_LOG_LEVEL_WARN) {
        capture_line(line);
    }
    if (!Py_IsInitialized()) {
        return;
    }
    // Logs come from whichever thread whisper.cpp runs on, with or without the GIL.
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *sink = nullptr;
    {
        std::lock_guard<std::mutex> lock(g_sink_mutex);
        sink = g_sink;
        Py_XINCREF(sink);
    }
    if (sink != nullptr) {
        PyObject *py_level = PyLong_FromLong(level);
        PyObject *py_line = PyUnicode_DecodeUTF8(line.data(), (Py_ssize_t) line.size(), "replace");
        PyObject *res = (py_level && py_line)
                            ? PyObject_CallFunctionObjArgs(sink, py_level, py_line, nullptr)
                            : nullptr;
        if (res == nullptr) {
            PyErr_Clear();  // a failing log handler must never break a transcription
        }
        Py_XDECREF(res);
        Py_XDECREF(py_line);
        Py_XDECREF(py_level);
        Py_DECREF(sink);
    }
    PyGILState_Release(gil);
}

void on_log(enum ggml_log_level level, const char *text, void * /*user_data*/) {
    if (text == nullptr) {
        return;
    }
    if (level != GGML_LOG_LEVEL_CONT) {
        if (!t_pending.empty()) {
            emit(t_pending_level, t_pending);
            t_pending.clear();
        }
        t_pending_level = level;
    }
    for (const char *p = text; *p; ++p) {
        if (*p == '\n') {
            emit(t_pending_level, t_pending);
            t_pending.clear();
        } else {
            t_pending.push_back(*p);
        }
    }
}

}  // namespace

void set_stopping(bool stopping) { t_stopping = stopping; }

void capture_line(const std::string &line) {
    if (t_capture != nullptr) {
        t_capture->lines_.push_back(line);
    }
}

void set_log_sink(void *py_callable_or_null) {
    PyObject *obj = static_cast<PyObject *>(py_callable_or_null);
    if (obj == Py_None) {
        obj = nullptr;
    }
    Py_XINCREF(obj);
    PyObject *old = nullptr;
    {
        std::lock_guard<std::mutex> lock(g_sink_mutex);
        old = g_sink;
        g_sink = obj;
    }
    Py_XDECREF(old);
    whisper_log_set(on_log, nullptr);
    ggml_log_set(on_log, nullptr);
}

LogCapture::LogCapture() : previous_(t_capture) { t_capture = this; }

LogCapture::~LogCapture() { t_capture = previous_; }

bool LogCapture::mentions_out_of_memory() const {
    for (const auto &line : lines_) {
        const std::string l = lower(line);
        if (l.find("out of memory") != std::string::npos ||
            l.find("failed to allocate") != std::string::npos ||
            l.find("cudamalloc") != std::string::npos) {
            return true;
        }
    }
    return false;
}

std::string LogCapture::summary(size_t max_lines) const {
    std::string out;
    const size_t start = lines_.size() > max_lines ? lines_.size() - max_lines : 0;
    for (size_t i = start; i < lines_.size(); ++i) {
        if (!out.empty()) {
            out += "; ";
        }
        out += lines_[i];
    }
    return out;
}

}  // namespace whisperd
