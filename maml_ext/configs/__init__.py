"""Packaged run configurations (``maml-ext train sinusoid``)."""
