"""Safety layer: the model registry, the safety gate and the online watchdog (never torch)."""
