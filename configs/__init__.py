"""liveditor.configs"""
