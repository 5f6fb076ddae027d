"""Stage 4: LightGBM heads, the HSPI-LD baseline, evidence over queries, evaluation."""
