"""The embedded simulator: Meta-World (MuJoCo) behind our task interface, and closed-loop rollouts."""
