"""Label-free ensemble methods for classification and score teachers (docs/methods.md).

A method is one module here with a `Method` subclass (`base.py`) that sets `name`: the kinds
registry (pipeline/kinds/__init__.py) finds it; nothing else needs to list it.
"""
