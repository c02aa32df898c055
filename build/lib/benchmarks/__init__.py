"""The benchmark suite behind ``fmnist bench``: the project against the tutorial's plain Keras script."""
