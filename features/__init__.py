"""Stage 3: rounding signatures, from responses to feature vectors."""
