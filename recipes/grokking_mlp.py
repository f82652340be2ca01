"""Grokking on modular addition (memorise, then generalise): see flq_audit.recipes.grokking_mlp."""

from flq_audit.recipes.grokking_mlp import main

if __name__ == "__main__":
    main()
