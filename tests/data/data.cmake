# Data preparation tests: run data/prepare.py on a small fixture text and check its shards independently
# (tests/check_prepared.py). Included by tests/CMakeLists.txt; needs only a stdlib python3.
find_program(SCMOE_PYTHON3 NAMES python3)
if(NOT SCMOE_PYTHON3)
  message(STATUS "python3 not found: data preparation tests skipped")
  return()
endif()

set(SCMOE_PREPARE ${CMAKE_SOURCE_DIR}/data/prepare.py)
set(SCMOE_CHECK_PREPARED ${CMAKE_CURRENT_LIST_DIR}/check_prepared.py)
set(SCMOE_SAMPLE_TEXT ${CMAKE_CURRENT_LIST_DIR}/sample.txt)
set(SCMOE_PREPARE_DIR ${CMAKE_CURRENT_BINARY_DIR}/prepare)
# Each scenario writes into its own directory, so the tests can run in parallel.
file(MAKE_DIRECTORY ${SCMOE_PREPARE_DIR}/default ${SCMOE_PREPARE_DIR}/sharded)

# Defaults: output under ./data/tinyshakespeare, the trainer's default globs; 10% validation.
add_test(NAME data_prepare_default
         COMMAND ${SCMOE_PYTHON3} ${SCMOE_PREPARE} --input ${SCMOE_SAMPLE_TEXT})
set_tests_properties(data_prepare_default PROPERTIES WORKING_DIRECTORY ${SCMOE_PREPARE_DIR}/default
                     FIXTURES_SETUP prepared_default LABELS unit)
add_test(NAME data_prepare_check_default
         COMMAND ${SCMOE_PYTHON3} ${SCMOE_CHECK_PREPARED} --prepare ${SCMOE_PREPARE}
                 --input ${SCMOE_SAMPLE_TEXT} --dir ${SCMOE_PREPARE_DIR}/default/data/tinyshakespeare
                 --val-fraction 0.1)
set_tests_properties(data_prepare_check_default PROPERTIES FIXTURES_REQUIRED prepared_default LABELS unit)

# Several small shards per split, a name prefix and an explicit validation size.
set(SCMOE_SHARDED_ARGS --name tiny --val-tokens 1000 --shard-tokens 700)
add_test(NAME data_prepare_sharded
         COMMAND ${SCMOE_PYTHON3} ${SCMOE_PREPARE} --input ${SCMOE_SAMPLE_TEXT}
                 --out-dir ${SCMOE_PREPARE_DIR}/sharded ${SCMOE_SHARDED_ARGS})
set_tests_properties(data_prepare_sharded PROPERTIES FIXTURES_SETUP prepared_sharded LABELS unit)
add_test(NAME data_prepare_check_sharded
         COMMAND ${SCMOE_PYTHON3} ${SCMOE_CHECK_PREPARED} --prepare ${SCMOE_PREPARE}
                 --input ${SCMOE_SAMPLE_TEXT} --dir ${SCMOE_PREPARE_DIR}/sharded ${SCMOE_SHARDED_ARGS})
set_tests_properties(data_prepare_check_sharded PROPERTIES FIXTURES_REQUIRED prepared_sharded LABELS unit)

# Bad invocations fail with a message (no traceback); re-preparing removes stale shards.
add_test(NAME data_prepare_errors
         COMMAND ${SCMOE_PYTHON3} ${SCMOE_CHECK_PREPARED} --errors --prepare ${SCMOE_PREPARE}
                 --input ${SCMOE_SAMPLE_TEXT})
set_tests_properties(data_prepare_errors PROPERTIES LABELS unit)
