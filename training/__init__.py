"""posegraph training: datasets, synthetic people, transforms, losses, trainer, evaluation, export."""
