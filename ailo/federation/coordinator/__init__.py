"""Federation's coordinator side: rounds, admission, the validation pipeline, proof of
contribution, reputation, the private holdout and the stored state they read and write."""
