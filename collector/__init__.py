"""Stage 1: probe sets, reference models, targets and collection jobs."""
