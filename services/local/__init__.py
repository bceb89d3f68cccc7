"""The local cluster: `hfx up` / `hfx down` start and stop every process on this machine."""
