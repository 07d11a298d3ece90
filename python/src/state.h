// dsv4._core.State: a decode state with the config it belongs to (save()
// writes its fingerprint). Shared by the layer and the MPI bindings.
#pragma once
#include "dsv4/config.h"
#include "dsv4/layer.h"

namespace dsv4::py_bind {

struct State {
  LayerState state;
  Config config;
};

}  // namespace dsv4::py_bind
