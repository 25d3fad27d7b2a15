"""Ready YAML recipes, installed as ``dynsearch.recipes`` package data."""
