// toml++ as lossytp includes it (every file that parses TOML includes this, never toml++ itself,
// so that all of them see the same library configuration).
//
// toml++ 3.3 (Debian 12) asserts a precondition in parse_key() that a malformed table header
// breaks ("[/", "[[\x17", "[[[": upstream marzer/tomlplusplus PR #301); the parser's own error
// path follows and reports a parse error. Found by tests/fuzz/fuzz_config: with assertions on
// (Debug, the sanitizer and fuzz builds) a malformed grid or config file aborted lossytp
// instead of naming the error. toml++'s assertions are therefore off in every build; Release
// builds (NDEBUG) already had them off (with GCC, whose TOML_ASSUME is a no-op).
#pragma once
#ifndef NDEBUG
#define TOML_ASSERT(expr) static_assert(true)
#endif
#include <toml++/toml.h>
