"""Reproduce the paper's grokking experiment (Figs. 13 and 14): see flq_audit.recipes.grokking_paper."""

from flq_audit.recipes.grokking_paper import main

if __name__ == "__main__":
    main()
