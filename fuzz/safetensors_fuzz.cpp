// SafeTensors::parse must accept or reject any bytes with a dsv4::Error:
// no crash, leak or undefined behaviour. Accepted tensors are read out too.
#include <cstddef>
#include <cstdint>

#include "dsv4/error.h"
#include "dsv4/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const dsv4::SafeTensors st =
        dsv4::SafeTensors::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz.safetensors");
    for (const std::string& name : st.names()) {
      if (st.info(name).dtype == dsv4::DType::I64)
        st.i64(name);
      else
        st.f32(name);
    }
    for (const auto& [key, _] : st.metadata()) st.meta(key);
  } catch (const dsv4::Error&) {
  }
  return 0;
}
