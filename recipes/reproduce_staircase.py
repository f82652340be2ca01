"""Reproduce the paper's staircase experiment (Fig. 8): see flq_audit.recipes.staircase_report."""

from flq_audit.recipes.staircase_report import main

if __name__ == "__main__":
    main()
