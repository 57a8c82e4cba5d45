"""maml_ext."""
