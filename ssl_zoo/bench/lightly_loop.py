"""The benchmark's other side: each method written with lightly's own building blocks, as lightly's
PyTorch examples write them (``examples/pytorch/{simclr,byol,moco,dino}.py`` of lightly 1.6): a backbone,
lightly's heads, loss and view transform, a torchvision DataLoader and a plain training loop.

Only what must match for a fair timing follows our run config instead of the examples' toy values: the
backbone (torchvision's ResNet-18 or timm's ViT, the same network as ours), head widths, temperature,
queue length, views and image size, optimizer (lightly's LARS where we use LARS) with a per-step cosine
schedule (lightly's ``CosineWarmupScheduler``) and precision (``torch.autocast`` where ours is mixed).
Loops stay as lightly's examples write them: one forward per view, momentum updates before the step.
lightly is an optional dependency (``pip install -e '.[bench]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.bench.measure import Block, PeakMemory, StepClock
from ssl_zoo.errors import SSLZooError


def import_lightly():
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise SSLZooError("the lightly side of the benchmark needs lightly: pip install -e '.[bench]' "
                          "(or run sides=ours)") from None


def lightly_backbone(cfg: DictConfig) -> tuple[nn.Module, int]:
    """The encoder as lightly's examples build it: torchvision's resnet without its classifier
    (``nn.Sequential(*children[:-1])``), or a timm ViT as lightly's ViT benchmarks; the same network as ours."""
    bb, size = cfg.backbone, int(cfg.data.image_size)
    if bb.name.startswith("resnet"):
        resnet = getattr(torchvision.models, bb.name)()
        if bb.cifar_stem or (bb.cifar_stem is None and size <= 64):
            resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        return nn.Sequential(*list(resnet.children())[:-1], nn.Flatten(1)), resnet.fc.in_features
    import timm

    from ssl_zoo.backbones.config import VITS

    vit = timm.create_model(VITS.get(bb.name, bb.get("model_name")), pretrained=False, num_classes=0, img_size=size,
                            patch_size=bb.patch_size, **dict(bb.get("kwargs") or {}))
    return vit, vit.num_features


class TransformedDataset(Dataset):
    """``(transform(image), label)``: what ``torchvision.datasets.*(transform=...)`` hands lightly's examples."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return self.transform(image), label


@dataclass
class Recipe:
    """One method in lightly's blocks: ``loss(views, step)`` runs the forward passes and the loss;
    ``after_backward(step)`` is the examples' hook between backward and the optimizer step."""

    model: nn.Module
    transform: Callable
    loss: Callable[[list[Tensor], int], Tensor]
    after_backward: Callable[[int], None] = lambda step: None


def _cfg_lr(cfg: DictConfig) -> float:
    opt = cfg.optimizer
    return float(opt.lr) * (cfg.data.batch_size / opt.reference_batch if opt.lr_scaling == "linear" else 1.0)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of the run config with lightly's pieces: LARS from ``lightly.utils.lars``, no weight
    decay on biases and norms (``get_weight_decay_parameters``) as lightly's benchmarks do; SGD and AdamW
    from torch."""
    from lightly.models.utils import get_weight_decay_parameters

    opt, lr = cfg.optimizer, _cfg_lr(cfg)
    trainable = [m for m in model.children() if any(p.requires_grad for p in m.parameters())]
    decay, no_decay = get_weight_decay_parameters(trainable)
    groups = [{"params": [p for p in decay if p.requires_grad]},
              {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0}]
    if opt.name == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                    trust_coefficient=opt.get("trust_coefficient", 0.001))
    if opt.name in ("adamw", "lamb"):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.get("momentum", 0.9), weight_decay=opt.weight_decay)


def _momentum_pair(module: nn.Module, copy_weights: bool = True) -> nn.Module:
    """The EMA target: a deep copy (lightly's examples) or ``module`` itself, with gradients off."""
    from lightly.models.utils import deactivate_requires_grad

    target = copy.deepcopy(module) if copy_weights else module
    deactivate_requires_grad(target)
    return target


def simclr(cfg: DictConfig, total_steps: int) -> Recipe:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    m, size = cfg.method, int(cfg.data.image_size)
    backbone, dim = lightly_backbone(cfg)

    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(dim, m.proj_hidden_dim, m.proj_output_dim)

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    model, criterion = SimCLR(), NTXentLoss(temperature=m.temperature)
    return Recipe(model, SimCLRTransform(input_size=size), lambda views, step: criterion(model(views[0]),
                                                                                         model(views[1])))


def byol(cfg: DictConfig, total_steps: int) -> Recipe:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule

    m, size = cfg.method, int(cfg.data.image_size)
    backbone, dim = lightly_backbone(cfg)

    class BYOL(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(dim, m.proj_hidden_dim, m.proj_output_dim)
            self.prediction_head = BYOLPredictionHead(m.proj_output_dim, m.pred_hidden_dim, m.proj_output_dim)
            self.backbone_momentum = _momentum_pair(self.backbone)
            self.projection_head_momentum = _momentum_pair(self.projection_head)

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    model, criterion = BYOL(), NegativeCosineSimilarity()

    def loss(views, step):
        tau = cosine_schedule(step, total_steps, m.base_momentum, m.final_momentum)
        update_momentum(model.backbone, model.backbone_momentum, m=tau)
        update_momentum(model.projection_head, model.projection_head_momentum, m=tau)
        x0, x1 = views[:2]
        p0, z0 = model(x0), model.forward_momentum(x0)
        p1, z1 = model(x1), model.forward_momentum(x1)
        return 0.5 * (criterion(p0, z1) + criterion(p1, z0))

    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=size),
                              view_2_transform=BYOLView2Transform(input_size=size))
    return Recipe(model, transform, loss)


def moco_v2(cfg: DictConfig, total_steps: int) -> Recipe:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms import MoCoV2Transform

    m, size = cfg.method, int(cfg.data.image_size)
    backbone, dim = lightly_backbone(cfg)

    class MoCo(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(dim, m.proj_hidden_dim, m.proj_output_dim)
            self.backbone_momentum = _momentum_pair(self.backbone)
            self.projection_head_momentum = _momentum_pair(self.projection_head)

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    model = MoCo()
    criterion = NTXentLoss(temperature=m.temperature, memory_bank_size=(m.queue_size, m.proj_output_dim))

    def loss(views, step):
        update_momentum(model.backbone, model.backbone_momentum, m=m.momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=m.momentum)
        return criterion(model(views[0]), model.forward_momentum(views[1]))

    return Recipe(model, MoCoV2Transform(input_size=size), loss)


def dino(cfg: DictConfig, total_steps: int) -> Recipe:
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms import DINOTransform
    from lightly.utils.scheduler import cosine_schedule

    m, size = cfg.method, int(cfg.data.image_size)
    crops = list(cfg.augmentation.crops)
    local = [g for g in crops if float(g.size) != float(crops[0].size)]
    n_local = sum(int(g.num) for g in local)
    local_size = local[0].size if local else 0.4285714
    local_px = int(round(local_size * size)) if local_size <= 1 else int(local_size)
    backbone, dim = lightly_backbone(cfg)
    head = dict(hidden_dim=m.hidden_dim, bottleneck_dim=m.bottleneck_dim, output_dim=m.out_dim,
                batch_norm=m.use_bn_in_head, norm_last_layer=m.norm_last_layer)

    class DINO(nn.Module):
        def __init__(self):
            super().__init__()
            self.student_backbone = backbone
            self.student_head = DINOProjectionHead(dim, freeze_last_layer=m.freeze_last_layer_epochs, **head)
            self.teacher_backbone = _momentum_pair(backbone)
            # a new head, as lightly's example builds it (weight-normalised layers refuse deepcopy)
            self.teacher_head = _momentum_pair(DINOProjectionHead(dim, **head), copy_weights=False)

        def forward(self, x):
            return self.student_head(self.student_backbone(x).flatten(start_dim=1))

        def forward_teacher(self, x):
            return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))

    model = DINO()
    criterion = DINOLoss(output_dim=m.out_dim, warmup_teacher_temp=m.warmup_teacher_temp, teacher_temp=m.teacher_temp,
                         warmup_teacher_temp_epochs=max(1, int(m.warmup_teacher_temp_epochs)),
                         student_temp=m.student_temp, center_momentum=m.center_momentum)

    def loss(views, step):
        tau = cosine_schedule(step, total_steps, m.base_momentum, m.final_momentum)
        update_momentum(model.student_backbone, model.teacher_backbone, m=tau)
        update_momentum(model.student_head, model.teacher_head, m=tau)
        teacher_out = [model.forward_teacher(v) for v in views[:2]]
        student_out = [model.forward(v) for v in views]
        return criterion(teacher_out, student_out, epoch=0)

    transform = DINOTransform(global_crop_size=size, local_crop_size=local_px, n_local_views=n_local,
                              global_crop_scale=tuple(crops[0].scale),
                              local_crop_scale=tuple(local[0].scale) if local else (0.05, 0.4))
    return Recipe(model, transform, loss,
                  after_backward=lambda step: model.student_head.cancel_last_layer_gradients(current_epoch=0))


RECIPES: dict[str, Callable[[DictConfig, int], Recipe]] = {"simclr": simclr, "byol": byol, "moco_v2": moco_v2,
                                                           "dino": dino}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for a mixed precision (as a plain PyTorch loop adds it), nothing for fp32."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def run_block(cfg: DictConfig, base: Dataset, device: torch.device, precision: str, warmup: int, steps: int,
              workers: int) -> Block:
    """Train a fresh lightly model for ``warmup + steps`` steps on ``base`` (PIL images) and time them."""
    torch.manual_seed(int(cfg.seed))  # the model's initial weights
    return train_lightly(RECIPES[cfg.method.name](cfg, warmup + steps), cfg, base, device, precision, warmup,
                         steps, workers)


def train_lightly(recipe: Recipe, cfg: DictConfig, base: Dataset, device: torch.device, precision: str, warmup: int,
                  steps: int, workers: int, lr_warmup_steps: int | None = None) -> Block:
    """Train ``recipe.model`` (in place) for ``warmup + steps`` steps on ``base`` and time them; the lr warms
    up over ``lr_warmup_steps`` (a tenth of the steps when None, as lightly's examples) then decays as a cosine."""
    import_lightly()
    from lightly.utils.scheduler import CosineWarmupScheduler

    torch.manual_seed(int(cfg.seed))
    total = warmup + steps
    model = recipe.model.to(device)
    optimizer = build_optimizer(cfg, model)
    # lightly's schedule refuses a warm-up longer than the run (ours warns and warms up over the whole run)
    lr_warmup = max(1, total // 10) if lr_warmup_steps is None else min(max(1, lr_warmup_steps), total)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=lr_warmup, max_epochs=total)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    loader = DataLoader(TransformedDataset(base, recipe.transform), batch_size=int(cfg.data.batch_size),
                        shuffle=True, drop_last=True, num_workers=workers, pin_memory=device.type == "cuda")
    clock, peak = StepClock(device, warmup), PeakMemory(device)
    model.train()
    peak.reset()
    clock.start()
    batches = iter(loader)
    for step in range(total):
        try:
            views, _ = next(batches)
        except StopIteration:  # a data set smaller than the block: start another epoch, as a loop would
            batches = iter(loader)
            views, _ = next(batches)
        views = [v.to(device, non_blocking=True) for v in views]
        clock.batch_ready()
        with autocast(device, precision):
            loss = recipe.loss(views, step)
        if scaler is not None:
            scaler.scale(loss).backward()
            recipe.after_backward(step)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            recipe.after_backward(step)
            optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        clock.step_done()
    if not torch.isfinite(loss.detach()).item():
        raise SSLZooError(f"the lightly {cfg.method.name} loop reached a non-finite loss: its timing is void")
    return Block(clock.step_s, clock.wait_s, peak.peak_bytes())
