"""Reproduce the paper's random-labels experiment (Fig. 12) on digits: see flq_audit.recipes.random_labels."""

from flq_audit.recipes.random_labels import main

if __name__ == "__main__":
    main()
