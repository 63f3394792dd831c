"""The ML core: corpus plans, teacher inference, ensemble methods, losses, student trainer."""
