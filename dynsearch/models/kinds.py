"""The backbone kinds a recipe may name (models/backbones.py builds them; imports nothing)."""

BACKBONE_KINDS = ("cnn", "mlp", "resnet", "transformer", "user", "recurrent")
