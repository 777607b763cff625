"""`python -m trl_sail.sandbox [--world NAME]`: regenerate the bundled VAE, or pretrain a world into the cache."""

from .pretrain import main


if __name__ == "__main__":
    main()
