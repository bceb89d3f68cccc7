"""The worker: wraps one inference engine, streams tokens, reports load, registers in Redis."""
