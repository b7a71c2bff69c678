"""Hydra configs of liveditor-eval (a package so Hydra can find them in an installed wheel)."""
