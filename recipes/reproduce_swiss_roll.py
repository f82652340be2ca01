"""Reproduce the paper's swiss-roll figure (Fig. 1): see flq_audit.recipes.swiss_roll_report."""

from flq_audit.recipes.swiss_roll_report import main

if __name__ == "__main__":
    main()
