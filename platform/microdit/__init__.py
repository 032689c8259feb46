"""microdit: train and sweep MicroDiT text-to-image diffusion transformers on a micro-budget.

The package is laid out along the data flow (see README): ``model`` (the network only),
``diffusion`` (EDM objective and samplers), ``data`` (latent shards and the mixed stream),
``train`` (Ray Train loop), ``evaluate`` (FID / CLIP score), ``sweep`` (Ray Tune + Optuna).
"""

__version__ = "0.1.0"
