"""Training datasets and the deterministic sample stream the trainer draws from."""
