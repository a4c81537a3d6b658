"""The analysis of finished runs (`r1vla compare`, the study's report, its power): reads run folders through
libero_core's record format, never imports the rollout machinery (eval_libero). Light: imports nothing here."""
