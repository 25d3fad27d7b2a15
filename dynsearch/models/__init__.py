"""Backbones (CNN, ResNet, MLP, Transformer) and user backbones: what mechanisms build on.

- kinds.py      the backbone kinds a recipe may name (no torch: the recipe model imports it)
- backbones.py  the built-in backbones, split into a stem and stages; classifier heads
- user.py       kind ``user``: the stages a user's callable returns, checked
- build.py      ``build_backbone(config)``: the stem and stages of a trial config's backbone

This package's ``__init__`` imports nothing, so reading a recipe does not import torch.
"""
