"""HFX: an SLO-aware serving control plane for LLMs (one gRPC process per role)."""
