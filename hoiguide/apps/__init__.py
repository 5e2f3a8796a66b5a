"""Applications built on the library: the photo chain, the synthetic-scene runner, the
benchmark, batches, dataset evaluation and the web app. Nothing in the library imports them."""
