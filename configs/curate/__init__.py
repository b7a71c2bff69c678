"""Hydra configs of liveditor-curate (a package so Hydra can find them in an installed wheel)."""
