"""Experiments on the real drawings of ../shared: each runs the project's CLIs exactly as a user would and writes its
measured table into docs/RESULTS.md. Run them from the repo root: `python -m experiments.<name>`."""
