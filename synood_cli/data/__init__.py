"""Input data: finding images in folders (import-light) and decoding them in batches (torch)."""
