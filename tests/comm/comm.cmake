# Communicator tests. comm_tests is one program run as N ranks through train/launch over loopback: Gloo
# collectives (2 and 4 ranks), and a dead or hung rank that must turn into errors, not a hang.
add_executable(comm_tests ${CMAKE_CURRENT_LIST_DIR}/comm_tests.cpp)
target_link_libraries(comm_tests PRIVATE scmoe_lib)
target_compile_options(comm_tests PRIVATE ${SCMOE_WARNINGS})

find_program(SCMOE_PYTHON3 NAMES python3)
if(NOT SCMOE_PYTHON3)
  message(STATUS "python3 not found: multi-process communicator tests skipped")
  return()
endif()
set(SCMOE_LAUNCH ${CMAKE_SOURCE_DIR}/train/launch)

# gloo: every collective over Gloo; shm: the All-to-Alls through the shared-memory transport.
foreach(transport gloo shm)
  set(flag)
  if(transport STREQUAL "shm")
    set(flag --shm)
  endif()
  foreach(n 2 4)
    add_test(NAME comm_${transport}_${n}ranks
             COMMAND ${SCMOE_PYTHON3} ${SCMOE_LAUNCH} --nproc-per-node ${n} --master-port 0 --
                     $<TARGET_FILE:comm_tests> ${flag})
    set_tests_properties(comm_${transport}_${n}ranks PROPERTIES LABELS "unit;multiprocess" TIMEOUT 120)
  endforeach()
  foreach(failure dead hung)
    add_test(NAME comm_${transport}_${failure}_peer
             COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/comm_failed_peer.sh --${failure}-peer 4 ${SCMOE_PYTHON3}
                     ${SCMOE_LAUNCH} $<TARGET_FILE:comm_tests> ${flag})
    set_tests_properties(comm_${transport}_${failure}_peer PROPERTIES LABELS "unit;multiprocess" TIMEOUT 120)
  endforeach()
endforeach()
