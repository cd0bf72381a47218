"""The model lifecycle in a running deployment: the model store, registry changes with their
checks, the consumer's registry follower, shadow comparisons, backfills and training from a
topic."""
