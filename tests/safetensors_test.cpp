#include "dsv4/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include <nlohmann/json.hpp>

#include "dsv4/error.h"

namespace dsv4 {
namespace {

using ::testing::HasSubstr;

// A file image: 8-byte little-endian header length, header, data.
std::vector<std::byte> image(const std::string& header, size_t data_bytes = 0) {
  std::vector<std::byte> b(8 + header.size() + data_bytes, std::byte{0});
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) b[8 + header.size() + i] = std::byte(i & 0xff);
  return b;
}

std::string tmp_path(const std::string& name) { return ::testing::TempDir() + "/dsv4_st_" + name; }

void write_bytes(const std::string& path, const std::vector<std::byte>& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
  return b;
}

// Runs f, which must throw dsv4::Error naming `label` and containing `phrase`.
void expect_error(const std::function<void()>& f, const std::string& label, const std::string& phrase) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(label));
    EXPECT_THAT(e.what(), HasSubstr(phrase));
  }
}

void expect_parse_error(const std::vector<std::byte>& b, const std::string& phrase) {
  expect_error([&] { SafeTensors::parse(b, "model.safetensors"); }, "model.safetensors", phrase);
}

TEST(SafeTensors, DtypeNamesAndSizes) {
  EXPECT_EQ(dtype_name(DType::F32), "F32");
  EXPECT_EQ(dtype_name(DType::I64), "I64");
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

TEST(SafeTensors, RoundTrip) {
  const Tensor w({2, 3}, {1.5f, -2.f, 3.25f, 0.f, 1e-30f, -7.f});
  const TensorI64 pos{{4}, {0, -1, int64_t(1) << 40, 7}};
  const Tensor empty({0, 5});
  const TensorI64 scalar{{}, {42}};
  const std::string path = tmp_path("roundtrip.safetensors");
  // Deliberately not in sorted order: the writer keeps the given order.
  write_safetensors(path, {named("w", w), named("pos", pos), named("empty", empty), named("a_scalar", scalar)},
                    {{"config", "{\"dim\": 64}"}, {"mode", "test"}});

  const auto raw = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
  EXPECT_EQ(raw.size(), 8 + n + 24 + 32 + 0 + 8);

  const SafeTensors st = SafeTensors::open(path);
  EXPECT_EQ(st.label(), path);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"a_scalar", "empty", "pos", "w"}));
  EXPECT_EQ(st.meta("config"), "{\"dim\": 64}");
  EXPECT_EQ(st.metadata().size(), 2u);

  // Offsets are consecutive in the given order.
  EXPECT_EQ(st.info("w").begin, 0u);
  EXPECT_EQ(st.info("w").end, 24u);
  EXPECT_EQ(st.info("pos").begin, 24u);
  EXPECT_EQ(st.info("empty").begin, 56u);
  EXPECT_EQ(st.info("empty").end, 56u);
  EXPECT_EQ(st.info("a_scalar").end, 64u);

  const Tensor w2 = st.f32("w");
  EXPECT_EQ(w2.shape, w.shape);
  EXPECT_EQ(w2.data, w.data);
  const TensorI64 pos2 = st.i64("pos");
  EXPECT_EQ(pos2.shape, pos.shape);
  EXPECT_EQ(pos2.data, pos.data);
  const Tensor e2 = st.f32("empty");
  EXPECT_EQ(e2.shape, (Shape{0, 5}));
  EXPECT_TRUE(e2.empty());
  EXPECT_EQ(st.bytes("empty").size(), 0u);
  EXPECT_EQ(st.i64("a_scalar").data, std::vector<int64_t>{42});
  EXPECT_EQ(st.info("pos").dtype, DType::I64);
  EXPECT_TRUE(st.contains("w"));
  EXPECT_FALSE(st.contains("nope"));

  // parse() over the same bytes sees the same thing.
  const SafeTensors p = SafeTensors::parse(raw, "mem");
  EXPECT_EQ(p.names(), st.names());
  EXPECT_EQ(p.f32("w").data, w.data);

  // Copies share the mapping; it outlives the original.
  SafeTensors copy = [&] { return SafeTensors::open(path); }();
  EXPECT_EQ(copy.f32("w").data, w.data);
}

TEST(SafeTensors, EmptyFileAndNoMetadata) {
  const std::string path = tmp_path("empty_set.safetensors");
  write_safetensors(path, {});
  const SafeTensors st = SafeTensors::open(path);
  EXPECT_TRUE(st.names().empty());
  EXPECT_TRUE(st.metadata().empty());
  expect_error([&] { st.meta("config"); }, path, "no metadata key 'config'");
}

TEST(SafeTensors, UnalignedData) {
  // Pad the header so the data area starts at an odd offset.
  std::string h = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})";
  while ((8 + h.size()) % 8 != 5) h += ' ';
  auto b = image(h, 16);
  const float xs[2] = {3.5f, -1.f};
  const int64_t iv = -123456789012345;
  std::memcpy(b.data() + 8 + h.size(), xs, 8);
  std::memcpy(b.data() + 8 + h.size() + 8, &iv, 8);
  ASSERT_NE((8 + h.size()) % 4, 0u);
  const SafeTensors st = SafeTensors::parse(b, "mem");
  EXPECT_EQ(st.f32("x").data, (std::vector<float>{3.5f, -1.f}));
  EXPECT_EQ(st.i64("i").data, std::vector<int64_t>{iv});
}

TEST(SafeTensors, ZeroSizeTensorsNeverOverlap) {
  const auto b = image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                       R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                       R"("y":{"dtype":"I64","shape":[3,0],"data_offsets":[8,8]}})",
                       16);
  const SafeTensors st = SafeTensors::parse(b, "mem");
  EXPECT_EQ(st.names().size(), 3u);
}

TEST(SafeTensors, TooShort) {
  expect_parse_error({}, "too short");
  expect_parse_error(std::vector<std::byte>(5), "too short");
  const std::string empty = tmp_path("zero.safetensors");
  write_bytes(empty, {});
  expect_error([&] { SafeTensors::open(empty); }, empty, "too short");
  const std::string three = tmp_path("three.safetensors");
  write_bytes(three, std::vector<std::byte>(3));
  expect_error([&] { SafeTensors::open(three); }, three, "too short");
}

TEST(SafeTensors, DataCutShort) {
  const std::string path = tmp_path("cut.safetensors");
  write_safetensors(path, {named("w", Tensor({4, 4}))});
  auto b = read_bytes(path);
  b.resize(b.size() - 4);
  write_bytes(path, b);
  expect_error([&] { SafeTensors::open(path); }, path,
               "tensor 'w': data_offsets [0, 64] run past the end of the data area (60 bytes");
}

TEST(SafeTensors, HeaderLengthPastEnd) {
  auto b = image("{}");
  const uint64_t n = 1000;
  std::memcpy(b.data(), &n, 8);
  expect_parse_error(b, "is not a safetensors file: its header length (the first 8 bytes, 1000) runs past the end");
  const uint64_t huge = ~uint64_t(0);  // 8 + N must not wrap around
  std::memcpy(b.data(), &huge, 8);
  expect_parse_error(b, "runs past the end of the file");
  const std::string path = tmp_path("hdrlen.safetensors");
  write_bytes(path, b);
  expect_error([&] { SafeTensors::open(path); }, path, "runs past the end of the file");
  write_bytes(path, std::vector<std::byte>(64, std::byte{'#'}));  // a text file
  expect_error([&] { SafeTensors::open(path); }, path, path + " is not a safetensors file");
}

TEST(SafeTensors, BadJson) {
  expect_parse_error(image(R"({"a": {"dtype": )"), "bad JSON");
  expect_parse_error(image(""), "bad JSON");
  expect_parse_error(image("{\"\xff\": 1}"), "bad JSON");  // invalid UTF-8
  expect_parse_error(image("[1, 2]"), "header JSON must be an object");
}

// No raw header byte reaches a message: invalid UTF-8 turns into U+FFFD and
// control characters into escapes, so every message is valid, printable UTF-8.
TEST(SafeTensors, HeaderTextInMessagesIsEscaped) {
  auto message = [](const std::vector<std::byte>& b) {
    try {
      SafeTensors::parse(b, "model.safetensors");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "no error";
    return std::string();
  };
  for (const std::string& bad : {std::string("{\"\xff\xfe\": 1}"), std::string("{\"a\xc3\": 1}"),
                                 std::string("{\"t\":{\"dtype\":\"F\x80\"}}")}) {
    const std::string m = message(image(bad));
    EXPECT_THAT(m, HasSubstr("bad JSON"));
    EXPECT_NO_THROW((void)nlohmann::json(m).dump()) << "message is not valid UTF-8: " << m;
    EXPECT_TRUE(std::none_of(m.begin(), m.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; })) << m;
    EXPECT_THAT(m, HasSubstr("\xef\xbf\xbd")) << m;  // U+FFFD where the bad byte was
  }
  // Valid JSON whose strings hold control characters: escaped in the message.
  const std::string m = message(image(R"({"t\u0007":{"dtype":"X\u001b[31m","shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_THAT(m, HasSubstr(R"(tensor 't\u0007': unknown dtype 'X\u001b[31m')"));
}

// The format requires the tensors to tile the data area exactly.
TEST(SafeTensors, BytesOutsideEveryTensorAreRejected) {
  const std::string one = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_NO_THROW(SafeTensors::parse(image(one, 4), "m"));
  expect_parse_error(image(one, 5), "1 bytes after the last tensor's data (at 4 of 5");
  expect_parse_error(image(one, 12), "8 bytes after the last tensor's data");
  expect_parse_error(image("{}", 3), "3 bytes after the last tensor's data (at 0 of 3");
  expect_parse_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                     "data bytes [0, 4] before tensor 'a' belong to no tensor");
  expect_parse_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           12),
                     "data bytes [4, 8] before tensor 'b' belong to no tensor");
  // A file written by write_safetensors with one byte appended.
  const std::string path = tmp_path("trailing.safetensors");
  write_safetensors(path, {named("w", Tensor({2, 2}))});
  auto b = read_bytes(path);
  b.push_back(std::byte{0});
  write_bytes(path, b);
  expect_error([&] { SafeTensors::open(path); }, path, "1 bytes after the last tensor's data");
}

TEST(SafeTensors, ForeignDtypesAreListedNotRead) {
  // The released shards hold experts as I8 (packed FP4) next to the attention weights.
  const auto bytes = image(R"({"e":{"dtype":"I8","shape":[2,3],"data_offsets":[0,6]},)"
                           R"("d":{"dtype":"F64","shape":[1],"data_offsets":[6,14]},)"
                           R"("w":{"dtype":"F32","shape":[2],"data_offsets":[14,22]}})",
                           22);
  const SafeTensors st = SafeTensors::parse(bytes, "shard.safetensors");
  EXPECT_EQ(st.names(), (std::vector<std::string>{"d", "e", "w"}));
  EXPECT_EQ(st.info("e").dtype, DType::I8);
  EXPECT_EQ(st.f32("w").shape, (Shape{2}));
  expect_error([&] { st.f32("e"); }, "shard.safetensors", "tensor 'e': dtype is I8, expected F32, BF16, F16 or F8_*");
  expect_error([&] { st.i64("d"); }, "shard.safetensors", "tensor 'd': dtype is F64, expected I64");
  expect_parse_error(image(R"({"e":{"dtype":"I8","shape":[5],"data_offsets":[0,4]}})", 4),
                     "data_offsets span 4 bytes");  // sizes still checked
}

TEST(SafeTensors, UnknownDtype) {
  for (const std::string dt : {"XYZ", "f32", "I4"})
    expect_parse_error(image(R"({"t":{"dtype":")" + dt + R"(","shape":[2],"data_offsets":[0,4]}})", 4),
                       "tensor 't': unknown dtype '" + dt + "'");
  expect_parse_error(image(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4), "dtype must be a string");
}

TEST(SafeTensors, DuplicateTensorInHeader) {
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
                     "tensor 't' is listed twice in the header");
}

TEST(SafeTensors, MalformedEntries) {
  expect_parse_error(image(R"({"t":[1]})"), "tensor 't': entry must be an object");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[1]}})"), "tensor 't': missing 'data_offsets'");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})"),
                     "tensor 't': shape must be an array of non-negative integers");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", 4),
                     "shape must be an array of non-negative integers");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":3,"data_offsets":[0,12]}})", 12),
                     "shape must be an array of non-negative integers");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8),
                     "data_offsets must be two non-negative integers");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), "begin > end");
  expect_parse_error(image(R"({"__metadata__":{"k":1}})"), "__metadata__ value for key 'k' must be a string");
  expect_parse_error(image(R"({"__metadata__":[]})"), "__metadata__ must be an object");
}

TEST(SafeTensors, SizeMismatch) {
  expect_parse_error(image(R"({"q_a_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}})", 60),
                     "model.safetensors: tensor 'q_a_proj.weight': shape [4, 4] x 4 bytes = 64 bytes but "
                     "data_offsets span 60 bytes");
  expect_parse_error(image(R"({"p":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}})", 8),
                     "tensor 'p': shape [2] x 8 bytes = 16 bytes but data_offsets span 8 bytes");
}

TEST(SafeTensors, HugeShapeOverflows) {
  // 2^32 * 2^32 wraps to 0 in uint64; must be an error, not a 0-byte tensor.
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
                     "tensor 't': shape [4294967296,4294967296] is too large");
  // 2^62 elements fit int64 but 2^62 * 8 bytes does not fit uint64.
  expect_parse_error(image(R"({"t":{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                     "is too large (byte size overflows)");
  // Larger than uint64: nlohmann makes it a float.
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,0]}})"),
                     "shape must be an array of non-negative integers");
}

TEST(SafeTensors, OverlappingSpans) {
  expect_parse_error(image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}})",
                           28),
                     "tensors 'a' [0, 16] and 'b' [12, 28] overlap");
  expect_parse_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           8),
                     "overlap");
}

TEST(SafeTensors, SpanOutsideDataArea) {
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12),
                     "tensor 't': data_offsets [8, 16] run past the end of the data area (12 bytes");
  expect_parse_error(image(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[20,20]}})", 12),
                     "run past the end of the data area");
}

TEST(SafeTensors, MissingTensorAndDtypeMismatch) {
  const auto b = image(R"({"f":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("i":{"dtype":"I64","shape":[1],"data_offsets":[4,12]},"__metadata__":{"k":"v"}})",
                       12);
  const SafeTensors st = SafeTensors::parse(b, "model.safetensors");
  EXPECT_EQ(st.meta("k"), "v");
  EXPECT_FALSE(st.contains("__metadata__"));
  const std::string L = "model.safetensors";
  expect_error([&] { st.info("nope"); }, L, "no tensor named 'nope'");
  expect_error([&] { st.f32("nope"); }, L, "no tensor named 'nope'");
  expect_error([&] { st.i64("nope"); }, L, "no tensor named 'nope'");
  expect_error([&] { st.bytes("nope"); }, L, "no tensor named 'nope'");
  expect_error([&] { st.meta("nope"); }, L, "no metadata key 'nope'");
  expect_error([&] { st.f32("i"); }, L, "tensor 'i': dtype is I64, expected F32");
  expect_error([&] { st.i64("f"); }, L, "tensor 'f': dtype is F32, expected I64");
}

TEST(SafeTensors, OpenErrors) {
  const std::string missing = tmp_path("does_not_exist.safetensors");
  expect_error([&] { SafeTensors::open(missing); }, missing, "cannot open");
  expect_error([&] { SafeTensors::open(::testing::TempDir()); }, ::testing::TempDir(), "not a regular file");
}

TEST(SafeTensors, WriterErrors) {
  const std::string bad = ::testing::TempDir() + "/no_such_dir/x.safetensors";
  expect_error([&] { write_safetensors(bad, {named("a", Tensor({1}))}); }, bad, "cannot open for writing");
  const std::string path = tmp_path("dup.safetensors");
  expect_error(
      [&] {
        write_safetensors(path, {named("a", Tensor({1})), named("a", Tensor({2}))});
      },
      path, "duplicate tensor name 'a'");
  expect_error([&] { write_safetensors(path, {named("__metadata__", Tensor({1}))}); }, path, "reserved");
  NamedTensor wrong = named("w", Tensor({2}));
  wrong.bytes.resize(4);
  expect_error([&] { write_safetensors(path, {wrong}); }, path, "tensor 'w': shape [2] needs 8 bytes but has 4");
  Tensor inconsistent;
  inconsistent.shape = {3};
  expect_error([&] { named("bad", inconsistent); }, "'bad'", "given 0 values");
}

TEST(SafeTensors, RealConformanceFile) {
  const std::string path = DSV4_TEST_DATA "/conformance/small_swa_stateless_s4.safetensors";
  const SafeTensors st = SafeTensors::open(path);
  EXPECT_FALSE(st.meta("config").empty());
  const TensorInfo& h = st.info("chunk0.hidden_states");
  EXPECT_EQ(h.dtype, DType::F32);
  EXPECT_EQ(h.shape, (Shape{1, 4, 64}));
  EXPECT_EQ(st.f32("chunk0.hidden_states").numel(), 256);
  const TensorI64 pos = st.i64("chunk0.position_ids");
  EXPECT_EQ(pos.shape, (Shape{1, 4}));
  EXPECT_EQ(pos.data.size(), 4u);
  const auto names = st.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

}  // namespace
}  // namespace dsv4
