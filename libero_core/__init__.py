"""What demos, evaluation and analysis share about LIBERO: the per-suite table (suites), its benchmark and init
states (tasks), THE observation/action convention and envs (sim), LIBERO-PRO variants (perturbations), a dataset's
recorded starts (starts) and the episode record format of a run folder (records). Imports nothing here."""
