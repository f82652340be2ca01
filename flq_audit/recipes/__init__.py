"""Recipes that make real checkpoint sequences (the paper's networks on real data)."""
