"""The scheduler: the global queue, ranking and placement. Tokens never pass through it."""
