"""LIVEditor: instruction-based video editing with in-context diffusion transformers and ISA."""

__version__ = "0.1.0"
