"""Plain SGD on digits, every step saved with its batch log: see flq_audit.recipes.sgd_every_step."""

from flq_audit.recipes.sgd_every_step import main

if __name__ == "__main__":
    main()
