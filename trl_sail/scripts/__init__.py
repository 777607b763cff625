"""Command-line training scripts (`trl-sail dpo`, `trl-sail sail`), each with `make_parser()` and `main(...)`."""
