// Which JSON keys a config may carry (config_keys.cpp).
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string_view>

namespace dsv4 {

// strict (a layer's own config: conformance `config` metadata): every key,
// nested ones included, must be one the parser reads; anything else is an error.
// lenient (a model's config.json): the full model's other keys are accepted,
// but a key within a typo of one the parser reads (edit distance 1, or 2 for
// keys of 10+ characters, ignoring case and '-' vs '_') is an error naming
// both, since the parser would silently use the default instead.
// Errors omit the source (the caller prefixes it).
enum class KeyCheck { strict, lenient };
void check_config_keys(const nlohmann::json& j, KeyCheck mode);

// Optimal string alignment distance (edits: insert, delete, substitute, swap two neighbours).
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace dsv4
