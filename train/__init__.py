"""liveditor.train"""
