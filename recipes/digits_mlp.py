"""Train the paper's MLP on digits and save a checkpoint sequence: see flq_audit.recipes."""

from flq_audit.recipes.digits_mlp import main

if __name__ == "__main__":
    main()
