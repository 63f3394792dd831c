"""The ML core: corpus plans, teacher runners, ensemble methods, losses, student trainer."""
