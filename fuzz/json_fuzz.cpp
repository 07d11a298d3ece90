// The JSON readers of a model folder (config.json, conformance `config`
// metadata, model.safetensors.index.json) on arbitrary text: a Config or a
// dsv4::Error, never a crash, leak or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dsv4/config.h"
#include "dsv4/error.h"
#include "dsv4/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const dsv4::Config c = dsv4::config_from_json_text(text, "config.json");
    for (dsv4::LayerType t : c.layer_types) c.compress_rate(t);
    c.fingerprint();
  } catch (const dsv4::Error&) {
  }
  try {
    dsv4::layer_spec_from_json_text(text, "metadata");
  } catch (const dsv4::Error&) {
  }
  try {
    dsv4::parse_safetensors_index(text, "model.safetensors.index.json");
  } catch (const dsv4::Error&) {
  }
  return 0;
}
