"""The policy network (torch) and its export to one self-contained ONNX file.

A shared MLP backbone with per-task linear heads: the heads keep conflicting tasks apart,
the backbone is what continual consolidation protects. Observation normalisation lives inside the
network, so the exported graph takes raw observations.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from lifelong_ros.paths import WEIGHTS_FILE
from lifelong_ros.serving.interface import ACTION_OUTPUT, OBS_INPUT, TASK_INPUT

ONNX_OPSET = 17


@dataclass
class PolicyConfig:
    """Shape of a policy. ``multi_head=False`` is the single-head (task-agnostic) mode."""

    obs_dim: int = 39
    act_dim: int = 4
    hidden: tuple[int, ...] = (256, 256)
    num_heads: int = 1
    multi_head: bool = True
    # The network predicts a change to a prior action read off the observation: action =
    # act_gain * obs[:act_dim] + act_bias + net(obs) (for a robot whose first observations are the
    # commanded joints' positions: the action that holds them, the G1). False = the action itself.
    residual: bool = False
    # Fixed input features: for each (a, b, n) the difference obs[a:a+n] - obs[b:b+n], scaled by the
    # input normalisation's std of obs[a:a+n], fed to the backbone beside the normalised
    # observation. Relative positions (the object seen from the hand, the target from the object)
    # that an MLP would otherwise have to learn to subtract from 50 demonstrations (the G1).
    differences: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        for d in self.differences:
            a, b, n = d if len(d) == 3 else (-1, -1, 0)
            if n < 1 or min(a, b) < 0 or max(a, b) + n > self.obs_dim:
                raise ValueError(
                    f"input difference {list(d)}: expected (a, b, n) with n >= 1 and both slices within the "
                    f"{self.obs_dim} observation values"
                )

    @property
    def input_dim(self) -> int:
        """What the backbone reads: the observation plus the fixed differences."""
        return self.obs_dim + sum(n for _, _, n in self.differences)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["differences"] = [list(v) for v in self.differences]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        return cls(
            obs_dim=int(d["obs_dim"]),
            act_dim=int(d["act_dim"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            num_heads=int(d["num_heads"]),
            multi_head=bool(d.get("multi_head", True)),
            residual=bool(d.get("residual", False)),
            differences=tuple((int(a), int(b), int(n)) for a, b, n in d.get("differences", ())),
        )


class PolicyNet(nn.Module):
    """obs [N, obs_dim] float32, task_id [N] int64 -> action [N, act_dim].

    Parameters are named ``backbone.*`` (shared) and ``head_w`` / ``head_b`` (one slice per task),
    so strategies can treat the two groups differently (ANIL adapts heads only, EWC protects the
    backbone and the heads of earlier tasks).
    """

    # Buffers (register_buffer in __init__): declared so they type as tensors, not Tensor | Module.
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_gain: torch.Tensor  # residual models only
    act_bias: torch.Tensor

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if config.num_heads < 1 or (not config.multi_head and config.num_heads != 1):
            raise ValueError(f"need num_heads >= 1 (exactly 1 when multi_head=False), got {config.num_heads}")
        self.config = config
        layers: list[nn.Module] = []
        width = config.input_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = width
        self.head_w = nn.Parameter(torch.empty(config.num_heads, width, config.act_dim))
        self.head_b = nn.Parameter(torch.zeros(config.num_heads, config.act_dim))
        nn.init.uniform_(self.head_w, -1.0 / width**0.5, 1.0 / width**0.5)
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))
        if config.residual:
            if config.act_dim > config.obs_dim:
                raise ValueError(
                    f"a residual policy reads its prior action off obs[:act_dim]; got act_dim {config.act_dim} > obs_dim {config.obs_dim}"
                )
            self.register_buffer("act_gain", torch.zeros(config.act_dim))
            self.register_buffer("act_bias", torch.zeros(config.act_dim))

    @property
    def num_heads(self) -> int:
        return self.head_w.shape[0]

    def set_normalizer(self, obs: np.ndarray | torch.Tensor) -> None:
        """Fix the input normalisation from data (std floored so constant features stay finite)."""
        x = torch.as_tensor(obs, dtype=torch.float32)
        self.obs_mean.copy_(x.mean(0))
        self.obs_std.copy_(x.std(0).clamp_min(1e-2))

    def set_input_scale(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
        """Fix the input normalisation to a given scale (a robot's, not one task's data): ``(obs - mean) / std``."""
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        s = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if m.shape != self.obs_mean.shape or s.shape != self.obs_std.shape:
            raise ValueError(
                f"input scale of {tuple(m.shape)} means and {tuple(s.shape)} stds; expected {self.config.obs_dim} of each"
            )
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError(f"input scale std {s.tolist()} / mean {m.tolist()}: expected finite values, every std > 0")
        self.obs_mean.copy_(m)
        self.obs_std.copy_(s)

    def set_action_prior(self, gain: Sequence[float] | np.ndarray, bias: Sequence[float] | np.ndarray) -> None:
        """Fix a residual policy's prior action ``gain * obs[:act_dim] + bias`` (see PolicyConfig.residual)."""
        if not self.config.residual:
            raise ValueError(
                "set_action_prior on a policy with residual=False; build it with PolicyConfig(residual=True)"
            )
        g = torch.as_tensor(np.asarray(gain, dtype=np.float32))
        b = torch.as_tensor(np.asarray(bias, dtype=np.float32))
        if g.shape != self.act_gain.shape or b.shape != self.act_bias.shape:
            raise ValueError(
                f"action prior of {tuple(g.shape)} gains and {tuple(b.shape)} biases; expected {self.config.act_dim} of each"
            )
        if not (torch.isfinite(g).all() and torch.isfinite(b).all()):
            raise ValueError(f"action prior gain {g.tolist()} / bias {b.tolist()}: expected finite values")
        self.act_gain.copy_(g)
        self.act_bias.copy_(b)

    def prior(self, obs: torch.Tensor) -> torch.Tensor:
        """The prior action the network's output is added to: zeros unless the policy is residual."""
        if not self.config.residual:
            return torch.zeros(obs.shape[0], self.config.act_dim, dtype=obs.dtype)
        return obs[:, : self.config.act_dim] * self.act_gain + self.act_bias

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        x = (obs - self.obs_mean) / self.obs_std
        if self.config.differences:
            rel = [
                (obs[:, a : a + n] - obs[:, b : b + n]) / self.obs_std[a : a + n] for a, b, n in self.config.differences
            ]
            x = torch.cat([x, *rel], 1)
        return self.backbone(x)

    def forward(self, obs: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        if not self.config.multi_head:
            task_id = torch.zeros_like(task_id)
        h = self.features(obs)
        n, (heads, feat, act) = h.shape[0], self.head_w.shape
        # Every head on every row, then pick each row's head: a few tiny matmuls are ~7x cheaper
        # (forward + backward) than gathering an [N, F, A] weight tensor for a batched matmul.
        every = (h @ self.head_w.permute(1, 0, 2).reshape(feat, heads * act)).view(n, heads, act)
        pick = task_id.view(n, 1, 1).expand(n, 1, act)
        out = torch.gather(every, 1, pick).squeeze(1) + self.head_b[task_id]
        return out + self.prior(obs) if self.config.residual else out

    def ensure_heads(self, n: int) -> None:
        """Grow to at least ``n`` heads (new heads freshly initialised); a no-op in single-head mode."""
        if not self.config.multi_head or n <= self.num_heads:
            return
        extra = n - self.num_heads
        width = self.feature_dim
        new_w = torch.empty(extra, width, self.config.act_dim).uniform_(-1.0 / width**0.5, 1.0 / width**0.5)
        with torch.no_grad():
            self.head_w = nn.Parameter(torch.cat([self.head_w.detach(), new_w], 0))
            self.head_b = nn.Parameter(torch.cat([self.head_b.detach(), torch.zeros(extra, self.config.act_dim)], 0))
        self.config = PolicyConfig(**{**asdict(self.config), "num_heads": n})

    def clone(self) -> PolicyNet:
        other = PolicyNet(self.config)
        other.load_state_dict(self.state_dict())
        return other


def bc_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    obs: torch.Tensor,
    task_id: torch.Tensor,
    action: torch.Tensor,
) -> torch.Tensor:
    """Behaviour cloning: mean squared error to the demonstrated action.

    ``model`` is called only as ``model(obs, task_id)``: the module, or (during Fisher estimation) a
    functional stand-in for it (plugins.LossFn).
    """
    return torch.mean((model(obs, task_id) - action) ** 2)


def state_dict_from_bytes(data: bytes, file_name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """Tensors from a weights file's bytes: safetensors, or a weights-only ``torch.save`` archive."""
    if file_name == WEIGHTS_FILE:
        from safetensors.torch import load

        return load(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_policy(config: dict | PolicyConfig, state_dict: dict) -> PolicyNet:
    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig.from_dict(config)
    model = PolicyNet(cfg)
    model.load_state_dict(state_dict)
    return model


class _ExportWrapper(nn.Module):
    """Clamps task ids into the head range so a bad id cannot index out of bounds inside the graph."""

    def __init__(self, model: PolicyNet):
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        return self.model(obs, task_id.clamp(0, self.model.num_heads - 1))


def export_onnx(model: PolicyNet, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise ``model`` to a self-contained ONNX model (weights inline, dynamic batch axis).

    Uses the TorchScript-based exporter: it writes one file and takes milliseconds, where the
    dynamo exporter takes about a second and needs onnxscript — this is on the
    time-to-adapt path. ``metadata`` (e.g. version, num_heads) is stored in the model's
    metadata_props.
    """
    import onnx

    model = model.eval()
    obs = torch.zeros(2, model.config.obs_dim)
    task = torch.zeros(2, dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ExportWrapper(model),
            (obs, task),
            # The stub says path only, but the TorchScript exporter (dynamo=False) writes to any
            # binary file object, and torch.onnx.export passes `f` through under the same ignore.
            buf,  # type: ignore[arg-type]
            input_names=[OBS_INPUT, TASK_INPUT],
            output_names=[ACTION_OUTPUT],
            dynamic_axes={OBS_INPUT: {0: "batch"}, TASK_INPUT: {0: "batch"}, ACTION_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {
        "num_heads": str(model.num_heads),
        "multi_head": str(model.config.multi_head).lower(),
        "obs_dim": str(model.config.obs_dim),
        "act_dim": str(model.config.act_dim),
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()
