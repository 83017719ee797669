"""Inference pipelines that turn trained networks into tools for whole photos and folders."""
