"""The live benchmark (`hfx bench --target` / `--live-policies`): a workload sent open-loop to a
running HFX router or any OpenAI-compatible server, measured on the client the same way as the
simulator bench (services.report.metrics)."""
