"""The policy's ONNX interface: the tensor names the exporter writes and the runtime and gate feed.

Kept free of torch and onnxruntime so the serving side (policy server, safety monitor) can share
it without importing training code.
"""

OBS_INPUT = "obs"  # float32 [batch, obs_dim]
TASK_INPUT = "task_id"  # int64 [batch], head index
ACTION_OUTPUT = "action"  # float32 [batch, act_dim]
