// The Python class FusedAdamLists (csrc/mlp/adam_lists.cpp), bound into maml_ext._C.
#pragma once

#include <pybind11/pybind11.h>

namespace maml_ext {
void bind_adam_lists(pybind11::module& m);
}
