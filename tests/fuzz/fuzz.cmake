# libFuzzer runs of the config and token-shard header parsers (tests/fuzz/run_fuzz.sh; it skips with
# exit code 77 where clang or its fuzzer runtime is missing). Exclude with `ctest -LE fuzz`.
add_test(NAME fuzz_parsers COMMAND bash ${CMAKE_SOURCE_DIR}/tests/fuzz/run_fuzz.sh ${CMAKE_SOURCE_DIR} 20)
set_tests_properties(fuzz_parsers PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77 TIMEOUT 300)
