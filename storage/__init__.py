"""The teacher cache on disk or object storage: Arrow shards, plans, manifests.

This package must stay importable without torch or transformers, so that a cache can be
inspected on any laptop.
"""

FORMAT_VERSION = 2
"""Bumped whenever the on-disk layout or a column's meaning changes; part of every id."""


def code_version() -> str:
    """The installed distill version, recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distill")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
