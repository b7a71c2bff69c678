"""liveditor.eval"""
