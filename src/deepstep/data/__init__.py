"""Data: image sources (built-in, folders, archives), decoding, caching, splits and batches.

This package's __init__ imports nothing so that decode workers start quickly.
"""
