"""Learning layer: the policy model, the continual trainer and its plugins, meta-learning, strategies,
adaptation recipes and the worker process that runs them (torch lives here)."""
