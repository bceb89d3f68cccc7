"""Discrete-event simulator: simulated instances on a virtual clock, driven by the same policy
objects as the scheduler service. Every figure it produces is labelled as simulated."""

ENGINE_LABEL = "engine: sim (simulated)"
