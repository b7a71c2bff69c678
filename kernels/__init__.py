"""liveditor.kernels"""
