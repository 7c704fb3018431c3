# The multiprocess group. First the torchrun-like launcher train/launch itself (launch_tests.sh holds the
# cases; the stand-in ranks are in launch_fixtures/), each case in its own scratch directory
# launch_test_CASE.
foreach(case env usage exit1 sigkill sigterm sigint hang output)
  add_test(NAME launch_${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/launch_tests.sh ${CMAKE_SOURCE_DIR} ${case})
  set_tests_properties(launch_${case} PROPERTIES LABELS "unit;multiprocess" TIMEOUT 120
                       WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()

# Then the train binary end to end on several ranks through train/launch on loopback
# (multiprocess_tests.sh holds the cases; each runs in its own scratch directory mp_test_CASE).
find_program(SCMOE_PYTHON3 NAMES python3)
if(NOT SCMOE_PYTHON3)
  message(STATUS "python3 not found: multi-process training tests skipped")
  return()
endif()
foreach(case equiv_dense equiv_moe equiv_shared_expert equiv_scmoe equiv_balance peer_wait pipeline_2ranks balanced_routing resume_2ranks reshard_4to2 reshard_dense_2to1
             reshard_errors world_mismatch_error config_mismatch hung_rank rank_killed rank_exit1 launcher_sigterm)
  add_test(NAME mp_${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/multiprocess_tests.sh $<TARGET_FILE:train> ${CMAKE_SOURCE_DIR} ${case})
  set_tests_properties(mp_${case} PROPERTIES LABELS "unit;multiprocess" TIMEOUT 300
                       WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()
