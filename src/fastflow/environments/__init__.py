"""Per-pipeline virtual environments built with uv, cached in ``DATA_DIR/envs``."""
