"""The variational autoencoder: architecture, its size rule, and its loss.

The checkpoint is ``state_dict`` + :class:`VAEConfig`; the model is rebuilt from the config on
load, so no code is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Log-variances are clamped so that exp() stays finite on out-of-distribution inputs.
_LOGVAR_BOUND = 10.0


@dataclass(frozen=True)
class VAEConfig:
    input_dim: int
    hidden_dim: int
    latent_dim: int

    @classmethod
    def for_features(cls, n_features: int, input_dim: int) -> VAEConfig:
        """Size the network from the data: a latent code of about half the number of fields
        (2..16) and hidden layers of twice the encoded width (32..128)."""
        latent = min(max(n_features // 2, 2), 16)
        hidden = min(max(2 * input_dim, 32), 128)
        return cls(input_dim=input_dim, hidden_dim=hidden, latent_dim=latent)


class VAE(nn.Module):
    """MLP encoder to a diagonal-Gaussian posterior, MLP decoder back to the encoded features."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        d, h, k = config.input_dim, config.hidden_dim, config.latent_dim
        self.encoder = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.to_mean = nn.Linear(h, k)
        self.to_logvar = nn.Linear(h, k)
        self.decoder = nn.Sequential(
            nn.Linear(k, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        logvar = self.to_logvar(hidden).clamp(-_LOGVAR_BOUND, _LOGVAR_BOUND)
        return self.to_mean(hidden), logvar

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean alone: all that scoring uses."""
        mean: torch.Tensor = self.to_mean(self.encoder(x))
        return mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z)
        return out

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction from a sampled code (training), with posterior mean and log-variance."""
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = mean + noise * torch.exp(0.5 * logvar)
        return self.decode(z), mean, logvar


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    *,
    categorical: tuple[slice, ...] = (),
) -> torch.Tensor:
    """Per-row negative beta-ELBO with a standard-normal prior; ``beta`` < 1 keeps more of the
    data's geometry in the latent space. The decoder is a unit-variance Gaussian (squared error)
    for every column, except the one-hot blocks of ``categorical`` fields: there its outputs are
    logits and the loss is the cross-entropy of the field's value."""
    squared = (x_hat - x).pow(2)
    if categorical:
        gaussian = torch.ones(x.shape[1], dtype=torch.bool)
        entropy = torch.zeros(len(x), dtype=x.dtype)
        for cols in categorical:
            gaussian[cols] = False
            logits = x_hat[:, cols]
            entropy = entropy + torch.logsumexp(logits, dim=1) - (logits * x[:, cols]).sum(dim=1)
        reconstruction = squared[:, gaussian].sum(dim=1) + entropy
    else:
        reconstruction = squared.sum(dim=1)
    kl = -0.5 * (1.0 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)
    return reconstruction + beta * kl
