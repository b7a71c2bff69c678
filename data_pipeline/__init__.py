"""liveditor.data_pipeline"""
