"""The tiny demo configuration that several explorer test modules build and share."""

from __future__ import annotations

from explorer.demo import DemoConfig

TINY = DemoConfig(n_train=80, n_test=20, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)
