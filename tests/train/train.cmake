# End-to-end tests of the train binary on Tiny Shakespeare (tests/train/train_tests.sh holds the cases).
foreach(case learns resume_dense resume_scmoe resume_moe resume_balance eval_only nan_stops sigterm bad_inputs
             overlap_identical_pos1 overlap_identical_pos2 overlap_identical_pos3 overlap_measured pipeline_equiv
             data_changes checkpoint_corrupt out_dir_lock notices_on_resume)
  add_test(NAME train_${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/train_tests.sh $<TARGET_FILE:train> ${CMAKE_SOURCE_DIR} ${case})
  set_tests_properties(train_${case} PROPERTIES LABELS "unit;e2e" TIMEOUT 600 WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()
# Overlap is a property of scheduling: measure it with the machine to itself.
set_tests_properties(train_overlap_measured PROPERTIES RUN_SERIAL TRUE)
