"""Recipes: `run`, `compare`, `nightly`, each load → encode → build → fit → evaluate → publish on one `RunContext`."""
