#include "dsv4/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/dtype.h"
#include "dsv4/atomic_file.h"
#include "dsv4/error.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";

// Builds messages by streaming; chains of "literal" + std::string trip GCC 12's
// false -Wrestrict at -O3.
template <class... A>
std::string cat(const A&... a) {
  std::ostringstream o;
  (o << ... << a);
  return o.str();
}

// Header text for an error message: invalid UTF-8 becomes U+FFFD and control
// characters become JSON escapes, so no raw header byte reaches a terminal or log.
std::string printable(std::string_view s) {
  const std::string j = json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
  return j.substr(1, j.size() - 2);  // without the quotes dump adds
}

// (Not "quoted": ADL would pick std::quoted for a non-const std::string.)
std::string quote(const std::string& s) { return cat("'", printable(s), "'"); }
std::string span_str(uint64_t b, uint64_t e) { return cat("[", b, ", ", e, "]"); }

template <class... A>
[[noreturn]] void fail_tensor(const std::string& label, const std::string& name, const A&... what) {
  fail(cat(label, ": tensor ", quote(name), ": ", what...));
}

[[noreturn]] void fail_too_short(const std::string& label, uint64_t size) {
  fail(cat(label, ": file is ", size, " bytes, too short for the 8-byte header length (truncated file?)"));
}

// Parses JSON, also reporting the first key repeated inside the object at
// `depth` (1: the top-level object; 2: an object that is a top-level value,
// optionally only under the top-level key `under`). nlohmann would silently
// keep the last of two equal keys.
json parse_json_checking_keys(std::string_view text, int depth, const char* under, std::string& duplicate) {
  std::set<std::string> seen;
  std::string top;
  json::parser_callback_t cb = [&](int d, json::parse_event_t ev, json& parsed) {
    if (ev != json::parse_event_t::key) return true;
    if (d == 1) top = parsed.get<std::string>();
    if (d == depth && (!under || top == under) && !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  return json::parse(text.begin(), text.end(), cb);
}

// nlohmann parses every non-negative integer literal as number_unsigned, so
// this rejects negatives, floats and integers too big for uint64.
bool is_uint(const json& j) { return j.is_number_unsigned(); }

TensorInfo parse_entry(const std::string& label, const std::string& name, const json& j, uint64_t data_size) {
  if (!j.is_object()) fail_tensor(label, name, "entry must be an object with dtype, shape and data_offsets");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!j.contains(field)) fail_tensor(label, name, "missing '", field, "'");

  TensorInfo info;
  info.name = name;
  const json& dt = j["dtype"];
  if (!dt.is_string()) fail_tensor(label, name, "dtype must be a string");
  const std::optional<DType> parsed_dtype = parse_dtype_name(dt.get<std::string>());
  if (!parsed_dtype)
    fail_tensor(label, name, "unknown dtype ", quote(dt.get<std::string>()),
                " (supported: F32, I64, BF16, F16, F8_E4M3, F8_E8M0)");
  info.dtype = *parsed_dtype;

  const json& sh = j["shape"];
  if (!sh.is_array()) fail_tensor(label, name, "shape must be an array of non-negative integers");
  // Checked running product: it must stay within int64 so numel() on the
  // shape is well defined later, and times the element size within uint64.
  uint64_t count = 1;
  for (const json& d : sh) {
    if (!is_uint(d)) fail_tensor(label, name, "shape must be an array of non-negative integers, got ", sh.dump());
    const uint64_t v = d.get<uint64_t>();
    if (v > uint64_t(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(count, v, &count) ||
        count > uint64_t(std::numeric_limits<int64_t>::max()))
      fail_tensor(label, name, "shape ", sh.dump(), " is too large (element count overflows)");
    info.shape.push_back(int64_t(v));
  }
  const uint64_t esize = dtype_size(info.dtype);
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(count, esize, &nbytes))
    fail_tensor(label, name, "shape ", shape_str(info.shape), " is too large (byte size overflows)");

  const json& off = j["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !is_uint(off[0]) || !is_uint(off[1]))
    fail_tensor(label, name, "data_offsets must be two non-negative integers, got ", off.dump());
  info.begin = off[0].get<uint64_t>();
  info.end = off[1].get<uint64_t>();
  if (info.begin > info.end)
    fail_tensor(label, name, "data_offsets ", span_str(info.begin, info.end), " have begin > end");
  if (info.end > data_size)
    fail_tensor(label, name, "data_offsets ", span_str(info.begin, info.end), " run past the end of the data area (",
                data_size, " bytes; truncated file?)");
  if (nbytes != info.end - info.begin)
    fail_tensor(label, name, "shape ", shape_str(info.shape), " x ", esize, " bytes = ", nbytes,
                " bytes but data_offsets span ", info.end - info.begin, " bytes");
  return info;
}

// The tensors must tile the data area: no overlaps, and (as the format
// requires) no byte that belongs to no tensor, between tensors or after the last.
void check_spans(const std::string& label, const std::map<std::string, TensorInfo>& tensors, uint64_t data_size) {
  std::vector<const TensorInfo*> v;
  for (const auto& [_, t] : tensors)
    if (t.begin != t.end) v.push_back(&t);  // empty spans take no bytes
  std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  uint64_t covered = 0;  // end of the spans so far
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0 && v[i]->begin < v[i - 1]->end)
      fail(cat(label, ": tensors ", quote(v[i - 1]->name), " ", span_str(v[i - 1]->begin, v[i - 1]->end), " and ",
               quote(v[i]->name), " ", span_str(v[i]->begin, v[i]->end), " overlap"));
    if (v[i]->begin > covered)
      fail(cat(label, ": data bytes ", span_str(covered, v[i]->begin), " before tensor ", quote(v[i]->name),
               " belong to no tensor (safetensors allows no holes)"));
    covered = v[i]->end;
  }
  if (covered != data_size)
    fail(cat(label, ": ", data_size - covered, " bytes after the last tensor's data (at ", covered, " of ", data_size,
             "; safetensors allows no trailing bytes)"));
}

const TensorInfo& typed_info(const SafeTensors& st, const std::string& name, DType want) {
  const TensorInfo& t = st.info(name);
  if (t.dtype != want) fail_tensor(st.label(), name, "dtype is ", dtype_name(t.dtype), ", expected ", dtype_name(want));
  return t;
}

template <class T>
NamedTensor named_impl(const std::string& name, DType dtype, const Shape& shape, const std::vector<T>& data) {
  for (int64_t d : shape)
    if (d < 0) fail(cat("named(", quote(name), "): negative dimension in shape ", shape_str(shape)));
  if (numel(shape) != int64_t(data.size()))
    fail(cat("named(", quote(name), "): shape ", shape_str(shape), " given ", data.size(), " values"));
  NamedTensor nt{name, dtype, shape, std::vector<std::byte>(data.size() * sizeof(T))};
  if (!data.empty()) std::memcpy(nt.bytes.data(), data.data(), nt.bytes.size());
  return nt;
}

}  // namespace

SafeTensors SafeTensors::open(const std::filesystem::path& path) {
  const std::string label = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(cat(label, ": cannot open: ", std::strerror(errno)));
  struct stat sb {};
  if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(fd);
    fail(cat(label, ": not a regular file"));
  }
  const size_t size = size_t(sb.st_size);
  // mmap of length 0 fails, so reject short files before mapping.
  if (size < 8) {
    ::close(fd);
    fail_too_short(label, size);
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) fail(cat(label, ": mmap failed: ", std::strerror(mmap_errno)));
  // Own the mapping before parsing so a validation error still unmaps it.
  std::shared_ptr<void> mapping(addr, [size](void* p) { ::munmap(p, size); });
  SafeTensors st = parse({static_cast<const std::byte*>(addr), size}, label);
  st.mapping_ = std::move(mapping);
  return st;
}

SafeTensors SafeTensors::parse(std::span<const std::byte> bytes, std::string label) {
  if (bytes.size() < 8) fail_too_short(label, bytes.size());
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // little-endian host assumed
  if (n > bytes.size() - 8)          // what any other file's first 8 bytes give, e.g. text: a huge length
    fail(cat(label, " is not a safetensors file: its header length (the first 8 bytes, ", n,
             ") runs past the end of the file (", bytes.size(), " bytes)"));

  const char* hdr = reinterpret_cast<const char*>(bytes.data() + 8);
  json j;
  std::string dup;
  try {
    j = parse_json_checking_keys(std::string_view(hdr, n), 1, nullptr, dup);
  } catch (const json::exception& e) {
    fail(cat(label, ": bad JSON in header: ", printable(e.what())));
  }
  if (!j.is_object()) fail(cat(label, ": header JSON must be an object, got ", j.type_name()));
  if (!dup.empty()) fail(cat(label, ": tensor ", quote(dup), " is listed twice in the header"));

  SafeTensors st;
  st.label_ = std::move(label);
  st.data_ = bytes.subspan(8 + n);
  for (const auto& [key, value] : j.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) fail(cat(st.label_, ": __metadata__ must be an object of strings"));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(cat(st.label_, ": __metadata__ value for key ", quote(mk), " must be a string, got ", mv.type_name()));
        st.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    st.tensors_[key] = parse_entry(st.label_, key, value, st.data_.size());
  }
  check_spans(st.label_, st.tensors_, st.data_.size());
  return st;
}

bool SafeTensors::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorInfo& SafeTensors::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(cat(label_, ": no tensor named ", quote(name)));
  return it->second;
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : tensors_) out.push_back(name);
  return out;  // std::map keeps them sorted
}

const std::string& SafeTensors::meta(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) fail(cat(label_, ": no metadata key ", quote(key)));
  return it->second;
}

std::span<const std::byte> SafeTensors::bytes(const std::string& name) const {
  const TensorInfo& t = info(name);
  return data_.subspan(t.begin, t.end - t.begin);
}

// Decoded with memcpy-based loads: the data area need not be aligned.
Tensor SafeTensors::f32(const std::string& name) const {
  const TensorInfo& t = info(name);
  if (!is_float_dtype(t.dtype))
    fail_tensor(label_, name, "dtype is ", dtype_name(t.dtype), ", expected F32, BF16, F16 or F8_*");
  Tensor out(t.shape);
  decode_to_f32(t.dtype, data_.subspan(t.begin, t.end - t.begin), out.ptr());
  return out;
}

TensorI64 SafeTensors::i64(const std::string& name) const {
  const TensorInfo& t = typed_info(*this, name, DType::I64);
  TensorI64 out{t.shape, std::vector<int64_t>(size_t(numel(t.shape)))};
  if (t.end > t.begin) std::memcpy(out.data.data(), data_.data() + t.begin, t.end - t.begin);
  return out;
}

std::map<std::string, std::string> parse_safetensors_index(std::string_view text, const std::string& where) {
  json j;
  std::string dup;
  try {
    j = parse_json_checking_keys(text, 2, "weight_map", dup);
  } catch (const json::exception& e) {
    fail(cat(where, ": bad JSON: ", printable(e.what())));
  }
  if (!j.is_object()) fail(cat(where, ": must be a JSON object, got ", j.type_name()));
  auto wm = j.find("weight_map");
  if (wm == j.end()) fail(cat(where, ": no 'weight_map' (tensor name -> shard file)"));
  if (!wm->is_object()) fail(cat(where, ": 'weight_map' must be an object, got ", wm->type_name()));
  if (wm->empty()) fail(cat(where, ": 'weight_map' is empty"));
  if (!dup.empty()) fail(cat(where, ": tensor ", quote(dup), " is listed twice in 'weight_map'"));
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string())
      fail(cat(where, ": tensor ", quote(name), ": shard must be a file name string, got ", shard.dump()));
    const std::string s = shard.get<std::string>();
    // A plain name in the model folder: no path can escape it.
    if (s.empty() || s == "." || s == ".." || s.find_first_of(std::string("/\0", 2)) != std::string::npos)
      fail(cat(where, ": tensor ", quote(name), ": shard ", quote(s), " is not a plain file name"));
    out[name] = s;
  }
  return out;
}

NamedTensor named(const std::string& name, const Tensor& t) { return named_impl(name, DType::F32, t.shape, t.data); }

NamedTensor named(const std::string& name, const TensorI64& t) { return named_impl(name, DType::I64, t.shape, t.data); }

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string label = path.string();
  // ordered_json keeps entries in the given order (plain json sorts keys).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (t.name == kMetadataKey) fail(cat(label, ": tensor name '__metadata__' is reserved"));
    if (!seen.insert(t.name).second) fail(cat(label, ": duplicate tensor name ", quote(t.name)));
    for (int64_t d : t.shape)
      if (d < 0) fail_tensor(label, t.name, "negative dimension in shape ", shape_str(t.shape));
    const uint64_t want = uint64_t(numel(t.shape)) * dtype_size(t.dtype);
    if (want != t.bytes.size())
      fail_tensor(label, t.name, "shape ", shape_str(t.shape), " needs ", want, " bytes but has ", t.bytes.size());
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. invalid UTF-8 in a name
    fail(cat(label, ": cannot encode header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data area 8-byte aligned

  AtomicFile out(path, "write_safetensors");  // beside the target, synced, renamed: never a torn file
  const uint64_t n = text.size();
  out.write(&n, 8);
  out.write(text);
  for (const NamedTensor& t : tensors) out.write(t.bytes.data(), t.bytes.size());
  out.commit();
}

}  // namespace dsv4
