# Tests of the torchrun-like launcher train/launch (tests/multiprocess/launch_tests.sh holds the cases; the stand-in
# ranks are in tests/launch_fixtures/). Each case runs in its own scratch directory launch_test_CASE.
foreach(case env usage exit1 sigkill sigterm sigint hang output)
  add_test(NAME launch_${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/launch_tests.sh ${CMAKE_SOURCE_DIR} ${case})
  set_tests_properties(launch_${case} PROPERTIES LABELS "unit;multiprocess" TIMEOUT 120
                       WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()
