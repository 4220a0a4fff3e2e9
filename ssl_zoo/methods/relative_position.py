"""Relative patch position: Unsupervised Visual Representation Learning by Context Prediction (Doersch,
Gupta & Efros 2015).

    for x in loader:                                  # one view [B, C, S, S]
        3x3 layout of patches p with gaps g between them, somewhere in the image
        a = centre patch, y ~ U{0..7}, b = neighbour y  # each moved by up to `jitter` px on both axes
                                                      # (all_neighbours: every y, 8 pairs per image)
        a, b = chromatic(a), chromatic(b)             # colour dropping or green-magenta projection
        a, b = standardize(a), standardize(b)         # each channel centred, each patch to unit RMS
        loss = CE(c(cat(f(a), f(b))), y)              # shared encoder, classifier on the concatenation

Neighbours are numbered row-major around the centre: 0 1 2 / 3 _ 4 / 5 6 7.

Recipe (ImageNet, the paper): 96 px patches, gaps of 48 px (half a patch), jitter up to 7 px, images
resized to 150k-450k pixels; against chromatic aberration either *projection* (shift green and magenta
toward grey) or *colour dropping* (keep one random channel, replace the other two with Gaussian noise of
1/100 of the channel's std), and some patches down-sampled to 100 pixels and up-sampled again; an
AlexNet-style network per patch to fc6 (4096), late fusion into fc7 (4096) and fc8 (8). Deviations: the
layout is scaled to the view (patch, gap and jitter as fractions of the patch, ``gap`` 0.5 and ``jitter``
7/96, rounded, so at 32 px: 7 px patches, 4 px gaps, 1 px jitter); the encoder is the configured
convolutional backbone with a ``hidden_dim`` MLP on the concatenation; no pixelation counter-measure.
Each patch is standardised on its own (``standardize_patches``: each channel's mean removed, then the
patch divided by its RMS): the paper's mean subtraction, and the scaling its reference code
(cdoersch/deepcontext, ``prep_image``) adds "so that gradients are a less useful cue".
``patch_resize`` (not the paper's, off by default) resizes the patches before the encoder, so that on
small images it sees patches at the scale it sees whole images at in evaluation, as the paper's network
saw its 96 px patches at its native input size. ``all_neighbours=true`` (not the paper's) encodes the 9
patches of a layout once and classifies all 8 pairs, as RotNet uses every rotation of an image: 4x the
pairs for 2.25x the patch encodings.
Grey images (1 channel) have no chromatic aberration: ``chromatic`` does nothing there. Channel
operations are on normalised pixels (noise of 0.01 = 1/100 of a channel's std). The probe reads the
encoder on the whole view (a second, gradient-free pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.methods.jigsaw import check_convolutional
from ssl_zoo.transforms.color import denormalize
from ssl_zoo.transforms.patches import crop_patches, standardize_patches

CHROMATIC = ("none", "drop", "project")
# (row, column) of the 8 neighbours in the 3x3 layout, row-major around the centre (1, 1)
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def layout(size: int, gap: float, jitter: float) -> tuple[int, int, int]:
    """(patch, gap, jitter) in pixels for a ``size`` px view, gap and jitter given as fractions of the patch:
    the largest patch whose 3x3 layout with its gaps and jitter room fits in the view."""
    patch = max(1, math.floor(size / (3 + 2 * gap + 2 * jitter)))
    while patch > 1 and 3 * patch + 2 * round(gap * patch) + 2 * round(jitter * patch) > size:
        patch -= 1
    return patch, round(gap * patch), round(jitter * patch)


def drop_colours(patches: torch.Tensor, noise_std: float = 0.01) -> torch.Tensor:
    """Colour dropping (Doersch et al. 2015): each patch [N, C, p, p] keeps one random channel; the others
    become Gaussian noise of ``noise_std``."""
    n, c = patches.shape[:2]
    keep = F.one_hot(torch.randint(0, c, (n,), device=patches.device), c).to(patches.dtype).view(n, c, 1, 1)
    return keep * patches + (1 - keep) * noise_std * torch.randn_like(patches)


def project_green_magenta(patches: torch.Tensor, mean, std) -> torch.Tensor:
    """Projection (Doersch et al. 2015): remove the green-magenta component of each RGB pixel, the colour
    axis along which chromatic aberration shifts (a = (-1, 2, -1) / √6; grey stays grey). In pixel space,
    then normalised again. [N, 3, p, p] -> the same."""
    axis = torch.tensor([-1.0, 2.0, -1.0], dtype=patches.dtype, device=patches.device) / math.sqrt(6.0)
    pixels = denormalize(patches, mean, std)
    along = torch.einsum("nchw,c->nhw", pixels, axis)
    pixels = pixels - along[:, None] * axis.view(1, 3, 1, 1)
    m = torch.tensor(list(mean), dtype=patches.dtype, device=patches.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=patches.dtype, device=patches.device).view(1, 3, 1, 1)
    return (pixels - m) / s


@dataclass
class RelativePositionConfig(MethodConfig):
    min_views = 1
    name: str = "relative_position"
    gap: float = 0.5                # between neighbouring patches, as a fraction of the patch (48 / 96)
    jitter: float = 0.0729167       # most a patch moves on each axis, fraction of the patch (7 / 96)
    chromatic: str = "project"
    hidden_dim: int = 4096          # fc7 on the concatenation of the two patches' features
    all_neighbours: bool = False    # True: pair the centre with all 8 neighbours (9 patches encoded per image)
    patch_resize: int = 0           # > 0: patches resized (bilinear) to this many px before the encoder
    standardize_patches: bool = True  # each channel centred, each patch to unit RMS (the reference's prep_image)

    def validate(self, prefix: str = "method") -> None:
        check(0.0 <= self.gap <= 2.0, f"{prefix}.gap", self.gap, "a fraction of the patch side in [0, 2]")
        check(0.0 <= self.jitter <= 0.5, f"{prefix}.jitter", self.jitter, "a fraction of the patch side in [0, 0.5]")
        check(self.chromatic in CHROMATIC, f"{prefix}.chromatic", self.chromatic, "one of: " + ", ".join(CHROMATIC))
        check(self.hidden_dim >= 1, f"{prefix}.hidden_dim", self.hidden_dim, "an integer >= 1")
        check(self.patch_resize >= 0, f"{prefix}.patch_resize", self.patch_resize,
              "0 (patches at their own size) or a side in px >= 1")


class RelativePosition(Method):
    name = "relative_position"
    Config = RelativePositionConfig

    def __init__(self, cfg, num_train: int | None = None):
        check_convolutional(cfg, self.name)
        super().__init__(cfg, num_train)
        self.patch, self.gap, self.jitter = layout(cfg.data.image_size, self.hp.gap, self.hp.jitter)
        self.register_buffer("neighbours", torch.tensor(NEIGHBOURS), persistent=False)
        self.classifier = MLP(2 * self.feature_dim, self.hp.hidden_dim, len(NEIGHBOURS))

    def patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patches [B, K, C, p, p], labels): K = 2, the centre then one random neighbour, labels [B] which
        one; with ``all_neighbours`` K = 9, the centre then its 8 neighbours in label order, labels None."""
        b, size, dev = x.shape[0], x.shape[-1], x.device
        p, g, j = self.patch, self.gap, self.jitter
        span = 3 * p + 2 * g + 2 * j
        origin = torch.randint(0, size - span + 1, (b, 1, 2), device=dev) + j    # the layout's corner
        centre = torch.ones(b, 1, 2, dtype=torch.long, device=dev)
        if self.hp.all_neighbours:
            labels, cells = None, torch.cat([centre, self.neighbours.expand(b, -1, -1)], dim=1)   # [B, 9, 2]
        else:
            labels = torch.randint(0, len(NEIGHBOURS), (b,), device=dev)
            cells = torch.cat([centre, self.neighbours[labels][:, None]], dim=1)              # [B, 2, 2]
        corners = origin + cells * (p + g) + torch.randint(-j, j + 1, cells.shape, device=dev)
        return crop_patches(x, corners[..., 0], corners[..., 1], p), labels

    def chromatic(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[1] != 3 or self.hp.chromatic == "none":
            return patches
        if self.hp.chromatic == "drop":
            return drop_colours(patches)
        return project_green_magenta(patches, self.cfg.data.mean, self.cfg.data.std)

    def step(self, views, index) -> StepOutput:
        x = views[0]
        b = x.shape[0]
        patches, labels = self.patches(x)
        k = patches.shape[1]
        patches = self.chromatic(patches.flatten(0, 1))                     # [B·K, C, p, p]
        if self.hp.standardize_patches:
            patches = standardize_patches(patches, per_channel_mean=True)
        if self.hp.patch_resize:
            patches = F.interpolate(patches, size=self.hp.patch_resize, mode="bilinear", align_corners=False)
        h = self.backbone(self._format(patches)).view(b, k, -1)             # [B, K, D], centre first
        if labels is None:  # every neighbour: B·8 pairs, labels 0..7 per image
            labels = torch.arange(len(NEIGHBOURS), device=x.device).repeat(b)
            h = torch.cat([h[:, :1].expand(-1, k - 1, -1), h[:, 1:]], dim=2).flatten(0, 1)  # [8B, 2D]
        logits = self.classifier(h.reshape(labels.shape[0], -1))
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            features = self.backbone(x)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, features=features, logs={"position_acc": accuracy})
