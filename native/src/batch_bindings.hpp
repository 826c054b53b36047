#pragma once

#include <nanobind/nanobind.h>

#include "engine.hpp"

namespace whisperd {
void bind_batch(nanobind::module_ &m, nanobind::class_<Model> &model);
}
