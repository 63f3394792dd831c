"""Prefect flows, deployments and the `distill` command line."""
