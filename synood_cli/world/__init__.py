"""A generated image world (issue 23): procedural 64 px objects on contexts, with captions.

`spec` says what the world holds and draws single images; `generate` writes it as image folders;
`train_clip` (not part of CI) trains the world's small CLIP, shipped under `weights/`.
"""
