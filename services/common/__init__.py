"""Code every HFX service shares: domain types, proto conversion, config, Redis keys, tracing."""
