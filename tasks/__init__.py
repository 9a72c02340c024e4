"""The pipeline's stages: one module per stage, each a thin Prefect task over pure, typed functions."""
