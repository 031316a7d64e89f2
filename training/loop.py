"""The training loop: ``train(config) -> TrainResult``, for DCGAN, conditional DCGAN and VAE.

One function, ``_training_loop``, holds all the state of a run in its local variables (EDM's
``training_loop`` shape): setup, resume, outputs, then the loop. A step runs the run's PHASES in order,
each with its own optimizer and interval (stylegan2-ada's ``phases``):

  GAN  D     every step     D(cat[real, G(z).detach()]) in ONE forward -> d_loss -> opt_D
       Dreg  every r1_every  lazy R1 on real images, weighted by r1_every -> opt_D (Adam's lr/betas adjusted)
       G     every step     D frozen (requires_grad False), unwrapped D on G(z') -> g_loss -> opt_G
       then  EMA            G_ema <- lerp(G_ema, G, 1 - decay_t), decay_t = min(ema_decay, (1 + t) / (10 + t))
  VAE  V     every step     (recon, mu, logvar) = V(x, eps) -> Gaussian NLL + beta * KL -> opt_V

Before the EMA generator draws a sample grid or goes into a checkpoint its BatchNorm statistics are
re-estimated (models.standing_stats); before a checkpoint the VAE's mixture prior is fitted on latents of the
training data (training/prior.py), so its samples come from where the encoder puts data. Latents / VAE noise
of a step come from a generator seeded with (seed, rank, step), so a resumed run draws exactly what the
uninterrupted run would have drawn, on every rank, independent of any global RNG.

Metrics are AVERAGED over each logging interval on each rank and then across ranks (EDM's training_stats):
one row per interval in metrics.jsonl and TensorBoard, and the same means on rank 0's tqdm progress line.
On resume, rows of metrics.jsonl past the checkpoint's step are dropped before the run appends its own.

Distribution goes through training.dist only (the loop never reads environment variables); data through
training.data.open_loader, each rank its own disjoint share and the same number of steps per epoch.
Only rank 0 writes (config.json, metrics.jsonl, TensorBoard, samples, checkpoints, progress); with
``debug_probe`` every rank writes RUN/probe/rank-<r>.json for the multi-process tests.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import checkpoint, dist, losses, models, prior, sample, warmstart
from training.config import ModelKind, Precision, Resume, TrainConfig
from training.data import Batch, LoaderConfig, open_loader, to_model_input
from training.interrupt import StopRequest, TrainInterrupted

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainResult:
    rank: int
    world_size: int
    step: int                       # steps done when train() returned (== total steps)
    epoch: int                      # data position after the last step
    step_in_epoch: int
    metrics: dict[str, float]       # the last logged row (means over its interval and the ranks)
    checkpoint: str | None          # the final checkpoint (rank 0), else None
    resumed_from: str | None        # the checkpoint this run started from, if any


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str       # "D", "Dreg", "G" or "V": also the prefix of the metrics it reports
    opt: str        # key of the optimizer it steps
    interval: int   # runs on steps where step % interval == 0


def phases_for(cfg: TrainConfig) -> list[Phase]:
    if cfg.model == ModelKind.VAE:
        return [Phase("V", "V", 1)]
    reg = [Phase("Dreg", "D", cfg.r1_every)] if cfg.r1_gamma > 0 else []
    return [Phase("D", "D", 1), *reg, Phase("G", "G", 1)]


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """The EMA decay used after step `step` (0-based): ramps up so early EMA weights are not the random init."""
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def _step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0]) >> 1  # < 2**63
    return torch.Generator(device=device).manual_seed(s)


def param_digest(nets: dict[str, torch.nn.Module]) -> str:
    """sha256 over the bytes of every parameter of the trained networks (same on all ranks iff in sync)."""
    h = hashlib.sha256()
    for name in sorted(nets):
        for pname, p in dist.unwrap(nets[name]).named_parameters():
            h.update(f"{name}.{pname}".encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Averager:
    """Sums of each metric over a reporting interval, kept as tensors so a step never waits on the device
    (EDM's training_stats): ``add`` per step, ``means()`` at the end of the interval, ``reset`` after."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            v = torch.as_tensor(v).detach().double()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: float(self.sums[k]) / self.counts[k] for k in sorted(self.sums)}

    def reset(self) -> None:
        self.sums, self.counts = {}, {}


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop rows of metrics.jsonl whose step is past `last_step` (a resumed run rewrites them); returns how many
    rows were dropped. Atomic (temp file + os.replace). A torn last line (crash mid-write) is dropped too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def _adam(params, lr: float, betas: tuple[float, float], reg_interval: int | None) -> torch.optim.Adam:
    """Adam; for a network with a lazy regulariser every k steps, lr and betas are scaled by k / (k + 1) as in
    StyleGAN2, so the main and regularisation steps together move like one non-lazy step."""
    if reg_interval:
        r = reg_interval / (reg_interval + 1)
        lr, betas = lr * r, (betas[0] ** r, betas[1] ** r)
    return torch.optim.Adam(params, lr=lr, betas=betas)


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model` on `config.data` for `config.steps` steps (or epochs); see the module docstring."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with contextlib.ExitStack() as cleanup:  # closes the loader's threads and rank 0's writers, whatever happens
            return _training_loop(config, cleanup)
    finally:  # a process-wide switch: leave it as found (tests train several times in one process)
        torch.use_deterministic_algorithms(was_deterministic)


def _training_loop(cfg: TrainConfig, cleanup: contextlib.ExitStack) -> TrainResult:
    # ------------------------------------------------------------------ distribution, data
    backend = dist.init(cfg.backend)
    rank, world, device = dist.get_rank(), dist.get_world_size(), dist.device()
    run_dir = Path(cfg.run_dir)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    loader = open_loader(LoaderConfig(data=cfg.data, reader=cfg.reader, batch_size=cfg.batch_size, rank=rank,
                                      world_size=world, seed=cfg.seed, shuffle=True, with_ids=cfg.debug_probe))
    cleanup.callback(loader.close)
    manifest, spe = loader.manifest, loader.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * spe
    global_batch = cfg.batch_size * world
    spec = models.ModelSpec(
        kind=cfg.model, resolution=manifest.resolution, channels=manifest.channels, z_dim=cfg.latent_dim,
        base_channels=cfg.base_channels, num_classes=len(manifest.classes),
        mbstd_group=cfg.mbstd_group if cfg.model != ModelKind.VAE else 0,
    )
    spec_dict = dataclasses.asdict(spec) | {"kind": spec.kind.value}
    is_gan, conditional = cfg.model != ModelKind.VAE, cfg.model == ModelKind.CDCGAN
    amp_dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(cfg.precision)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == Precision.FP16)
    phases = phases_for(cfg)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    # ------------------------------------------------------------------ networks, optimizers
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (and broadcast anyway)
    nets = models.build(spec)
    for n in nets.values():
        n.to(device, memory_format=layout if channels_last else torch.preserve_format).train()
    scale = world if cfg.lr_scale_with_world else 1
    reg_interval = {"D": cfg.r1_every} if is_gan and cfg.r1_gamma > 0 else {}
    base_lr = {"G": cfg.lr_g, "D": cfg.lr_d, "V": cfg.lr_vae}
    betas = {"G": (cfg.beta1, cfg.beta2), "D": (cfg.beta1, cfg.beta2), "V": (0.9, 0.999)}
    opt = {k: dist.wrap_optimizer(_adam(n.parameters(), base_lr[k] * scale, betas[k], reg_interval.get(k)), n, f"{k}.")
           for k, n in nets.items()}
    lr = {k: o.param_groups[0]["lr"] for k, o in opt.items()}  # after the lazy-regularisation adjustment
    raw: dict[str, nn.Module] = dict(nets)  # unwrapped networks (checkpoints, EMA, frozen-D forward)
    if is_gan:
        raw["G_ema"] = copy.deepcopy(nets["G"]).eval().requires_grad_(False)

    # ------------------------------------------------------------------ resume (rank 0 loads; broadcast)
    step, epoch, step_in_epoch, found = 0, 0, 0, None
    if dist.is_main():
        if cfg.resume == Resume.AUTO.value:
            found = checkpoint.find_latest_valid(run_dir)
        elif cfg.resume == Resume.FRESH.value:
            aside = checkpoint.move_aside(run_dir)
            if aside is not None:
                print(f"[train] --resume fresh: moved the existing checkpoints to {aside}", flush=True)
        elif cfg.resume == Resume.NONE.value:
            existing = checkpoint.list_checkpoints(run_dir)
            if existing:
                raise FileExistsError(f"{run_dir} already has checkpoints ({existing[-1].name}, ...); "
                                      "pass --resume auto (or a checkpoint path) to continue, or use a fresh --run-dir")
        else:
            found = (Path(cfg.resume), checkpoint.load(cfg.resume))
        if found is not None:
            path, ck = found
            if ck.get("manifest_id") != manifest.manifest_id:
                raise ValueError(f"{path} was trained on dataset manifest {ck.get('manifest_id')}, "
                                 f"{cfg.data} has manifest {manifest.manifest_id}")
            if ck["model_spec"] != spec_dict:
                raise ValueError(f"{path} holds model {ck['model_spec']}, this run builds {spec_dict}")
            for k, sd in ck["models"].items():
                raw[k].load_state_dict(sd)
            for k, sd in ck["optimizers"].items():
                opt[k].load_state_dict(sd)
                for group in opt[k].param_groups:  # learning rates come from the config, not the checkpoint
                    group["lr"] = lr[k]
            if ck["scaler"]:  # empty when the run was not fp16
                scaler.load_state_dict(ck["scaler"])
            checkpoint.set_rng_state(ck["rng"])
            step, epoch, step_in_epoch = ck["step"], ck["epoch"], ck["step_in_epoch"]
            print(f"[train] resumed from {path} at step {step} (epoch {epoch}, step {step_in_epoch})", flush=True)
        elif cfg.init_from:
            ck = checkpoint.load(cfg.init_from)
            if ck["model_spec"]["kind"] != spec_dict["kind"]:
                raise ValueError(f"--init-from {cfg.init_from} holds a {ck['model_spec']['kind']}, this run trains a {spec_dict['kind']}")
            done = warmstart.warm_start({k: raw[k] for k in ck["models"] if k in raw}, ck, list(manifest.classes))
            print(f"[train] warm start from {cfg.init_from} (step {ck['step']}): classes {done['from_classes']} -> "
                  f"{done['to_classes']}{', grew ' + ', '.join(done['grown']) if done['grown'] else ''}", flush=True)
    step, epoch, step_in_epoch, resumed_from = dist.broadcast_object(
        (step, epoch, step_in_epoch, str(found[0]) if found else None))
    start_step = step
    dist.broadcast_state(list(raw.values()), list(opt.values()))
    net = {k: dist.wrap_model(n) for k, n in nets.items()}  # DDP (after the broadcast) or as is

    dist.print0(f"[train] config:\n{cfg.to_json()}")
    dist.print0(
        f"[train] backend={backend.value} world={world} device={device} model={spec.kind.value} res={spec.resolution} "
        f"ch={spec.channels} steps/epoch={spe} total={total} global_batch={global_batch} (= {cfg.batch_size} x {world}) "
        f"precision={cfg.precision.value} phases={[(p.name, p.interval) for p in phases]}"
    )
    # Every rank takes batch_size rows per step (checked per batch below) from its disjoint share, so one
    # epoch consumes steps_per_epoch x global batch rows, which the dataset must hold.
    if spe * global_batch > loader.num_rows:
        raise AssertionError(f"{spe} steps/epoch x global batch {global_batch} (= {cfg.batch_size} x {world} ranks) "
                             f"> {loader.num_rows} rows: the loader's shares are not disjoint")

    # ------------------------------------------------------------------ one step's phases
    def to_input(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = to_model_input(batch.images.to(device, non_blocking=True)).contiguous(memory_format=layout)
        if not conditional:
            return x, None
        if batch.labels is None:
            raise ValueError("cdcgan needs label_index in the dataset; this dataset has no labels")
        labels = batch.labels.to(device, non_blocking=True)
        # Sorted by class, so D's minibatch-stddev groups (consecutive images; fakes get the same labels in the
        # same order) mostly hold one class: the statistic then measures variety WITHIN a class, which is where a
        # conditional generator collapses. In a mixed group the class differences hide that collapse.
        order = torch.argsort(labels, stable=True)
        return x[order], labels[order]

    def opt_step(key: str, loss: torch.Tensor) -> None:
        opt[key].zero_grad()  # set_to_none (torch default; horovod takes no argument)
        scaler.scale(loss).backward()
        dist.optimizer_step(opt[key], scaler)
        scaler.update()  # per optimizer step: D may step twice in one training step (D, then Dreg)

    def d_phase(x, labels, gen) -> dict[str, torch.Tensor]:
        # One D forward over [real; fake] so DDP syncs D's gradients once; fake is detached. The minibatch-stddev
        # groups are consecutive and divide the half batch, so no group mixes real and fake.
        b = x.shape[0]
        z = torch.randn(b, spec.z_dim, generator=gen, device=device)
        with torch.no_grad(), autocast():
            fake = raw["G"](z, labels)
        with autocast():
            logits = net["D"](torch.cat([x, fake.to(x.dtype)]), torch.cat([labels, labels]) if conditional else None)
            loss = losses.d_loss(cfg.gan_loss, logits[:b], logits[b:])
        opt_step("D", loss)
        logits = logits.detach().float()
        return {"loss_d": loss.detach(), "d_real": logits[:b].mean(), "d_fake": logits[b:].mean()}

    def dreg_phase(x, labels, gen) -> dict[str, torch.Tensor]:
        # Lazy R1 in fp32: gamma / 2 * |grad D(x)|^2, times the interval so its average weight is gamma / 2.
        # "+ 0 * logits": every parameter of D is in the graph (biases get no R1 gradient), as DDP requires.
        x = x.detach().float().requires_grad_(True)
        logits = net["D"](x, labels)
        penalty = losses.r1_penalty(x, logits)
        opt_step("D", penalty * (cfg.r1_gamma / 2 * cfg.r1_every) + 0.0 * logits.float().sum())
        return {"r1": penalty.detach()}

    def g_phase(x, labels, gen) -> dict[str, torch.Tensor]:
        # D frozen and unwrapped, so no D gradients are computed or synchronised.
        # Mode seeking (Mao et al. 2019): images (2k, 2k+1) share a label and differ in z; G is rewarded for
        # turning a latent distance into an image distance, so it cannot ignore z within a class.
        z = torch.randn(x.shape[0], spec.z_dim, generator=gen, device=device)
        if labels is not None and cfg.ms_weight > 0:
            labels = labels.clone()
            labels[1::2] = labels[0::2][: labels[1::2].shape[0]]
        raw["D"].requires_grad_(False)
        try:
            with autocast():
                fake = net["G"](z, labels)
                loss = losses.g_loss(cfg.gan_loss, raw["D"](fake, labels))
                out = {"loss_g": loss}
                if cfg.ms_weight > 0 and x.shape[0] >= 2:
                    ms = losses.mode_seeking(fake, z)
                    loss = loss + cfg.ms_weight * ms
                    out["ms"] = ms
            opt_step("G", loss)
        finally:
            raw["D"].requires_grad_(True)
        return {k: v.detach() for k, v in out.items()}

    def v_phase(x, labels, gen) -> dict[str, torch.Tensor]:
        eps = torch.randn(x.shape[0], spec.z_dim, generator=gen, device=device)
        with autocast():
            recon, mu, logvar = net["V"](x, eps)
            nll, kl, log_sigma = losses.vae_terms(x, recon, mu, logvar)
            loss = nll + cfg.beta_kl * kl
        opt_step("V", loss)
        with torch.no_grad():  # the decoder scale the ELBO is evaluated with: a warmed-up running average
            raw["V"].log_sigma.lerp_(log_sigma.to(raw["V"].log_sigma), 1.0 - ema_decay_at(cfg, step))
        return {"loss": loss.detach(), "recon": nll.detach(), "kl": kl.detach(), "sigma": log_sigma.exp()}

    run_phase: dict[str, Callable[..., dict[str, torch.Tensor]]] = {"D": d_phase, "Dreg": dreg_phase, "G": g_phase, "V": v_phase}

    @torch.no_grad()
    def ema_update(decay: float) -> None:
        for pe, p in zip(raw["G_ema"].parameters(), raw["G"].parameters()):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(raw["G_ema"].buffers(), raw["G"].buffers()):
            be.copy_(b)  # replaced by standing statistics before the EMA generator is used

    # ------------------------------------------------------------------ outputs (rank 0)
    fixed_z = torch.randn(cfg.num_samples, spec.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    fixed_labels = (torch.arange(cfg.num_samples) % spec.num_classes).to(device) if conditional else None
    fixed_real, tb, metrics_file, bar = None, None, None, None
    with dist.main_process_first():
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter
            from tqdm import tqdm

            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(cfg.to_json() + "\n")
            dropped = truncate_metrics(run_dir / "metrics.jsonl", start_step)
            if dropped:
                print(f"[train] metrics.jsonl: dropped {dropped} rows past step {start_step} (they are written again)", flush=True)
            tb = cleanup.enter_context(contextlib.closing(SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)))
            metrics_file = cleanup.enter_context(open(run_dir / "metrics.jsonl", "a"))
            bar = cleanup.enter_context(tqdm(total=total, initial=start_step, unit="step", disable=not cfg.progress,
                                             dynamic_ncols=True, mininterval=1.0, desc=f"train {spec.kind.value}"))
            if not is_gan:  # a fixed real batch for reconstructions: the first batch of epoch 0 on rank 0
                it = loader.epoch(0)
                first = next(it)
                it.close()
                fixed_real, _ = to_input(Batch(images=first.images[:8], labels=None, ids=None))

    def say(text: str) -> None:  # above the progress line, not through it
        (bar.write if bar is not None and not bar.disable else print)(text)

    def prepare_ema() -> None:
        if is_gan:
            models.standing_stats(raw["G_ema"], spec, device, seed=cfg.seed + 2)

    @torch.no_grad()
    def fit_prior() -> None:
        """VAE: fit its mixture prior on one draw z ~ q(z|x) per row of (rank 0's share of) the training data,
        at most prior.FIT_ROWS rows, with the current encoder (training/prior.py). Sample grids and the
        checkpoint then carry it. Its own seeded generator: the run's RNG streams are untouched."""
        v = raw["V"]
        was, t0 = v.training, time.perf_counter()
        v.eval()
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
        zs, labs, n = [], [], 0
        it = loader.epoch(0)
        try:
            for b in it:
                mu, logvar = v.encode(to_model_input(b.images.to(device)).contiguous(memory_format=layout))
                zs.append(v.reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen, device=device)).float().cpu())
                labs.append(b.labels if b.labels is not None else torch.full((mu.shape[0],), -1, dtype=torch.long))
                n += mu.shape[0]
                if n >= prior.FIT_ROWS:
                    break
        finally:
            it.close()
            v.train(was)
        rows = v.prior.fit(torch.cat(zs), torch.cat(labs), seed=cfg.seed)
        say(f"[train] step {step}: fitted the VAE's prior on {n} latents "
            f"({sum(1 for r in rows.values() if r)} group(s)) in {time.perf_counter() - t0:.1f}s")

    @torch.no_grad()
    def write_samples() -> None:
        was = {k: n.training for k, n in raw.items()}
        for n in raw.values():
            n.eval()
        try:
            imgs = models.sampler(raw)(fixed_z, fixed_labels).float()
            path = sample.save_grid(imgs, run_dir / "samples" / f"samples-{step:08d}.png")
            tb.add_image("samples", np.asarray(sample.make_grid(imgs)), step, dataformats="HWC")
            if fixed_real is not None:
                recon, _, _ = raw["V"](fixed_real, torch.zeros(fixed_real.shape[0], spec.z_dim, device=device))
                pair = torch.stack([fixed_real, recon.float()], dim=1).flatten(0, 1)  # original, recon, ...
                sample.save_grid(pair, run_dir / "samples" / f"recon-{step:08d}.png", nrow=2 * min(4, fixed_real.shape[0]))
            say(f"[train] step {step}: wrote {path}")
        finally:
            for k, n in raw.items():
                n.train(was[k])

    def save_checkpoint() -> Path:
        ep, sie = (epoch + 1, 0) if step_in_epoch >= spe else (epoch, step_in_epoch)  # position of the next batch
        payload = {
            "format": CHECKPOINT_FORMAT, "step": step, "epoch": ep, "step_in_epoch": sie,
            "models": {k: n.state_dict() for k, n in raw.items()},
            "optimizers": {k: o.state_dict() for k, o in opt.items()},
            "scaler": scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": cfg.to_dict(),
            "model_spec": spec_dict,
            "manifest_id": manifest.manifest_id,
            "classes": list(manifest.classes),  # label_index -> label, so `generate --label NAME` works
            "world_size": world,
        }
        return checkpoint.save(run_dir, step, payload, keep=cfg.keep_ckpts)

    # ------------------------------------------------------------------ the loop
    ids_seen: list[str] = []
    stop = StopRequest()
    cleanup.callback(stop.restore)
    interval, last, last_local = Averager(), {}, {}
    final_ckpt = None
    t_log, steps_since = time.perf_counter(), 0
    while step < total:
        for batch in loader.epoch(epoch, start_step=step_in_epoch):
            if batch.images.shape[0] != cfg.batch_size:
                raise AssertionError(f"loader gave {batch.images.shape[0]} rows, expected batch_size {cfg.batch_size}")
            if cfg.debug_probe and batch.ids is not None:
                ids_seen.extend(batch.ids)
            x, labels = to_input(batch)
            gen = _step_generator(cfg.seed, rank, step, device)
            for phase in phases:
                if step % phase.interval == 0:
                    interval.add(run_phase[phase.name](x, labels, gen))
            if is_gan:
                ema_update(ema_decay_at(cfg, step))
            step, step_in_epoch, steps_since = step + 1, step_in_epoch + 1, steps_since + 1
            done = step >= total
            if done or (cfg.log_every > 0 and step % cfg.log_every == 0):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t_log
                last_local = interval.means()
                last = dist.allreduce_mean(last_local) | {
                    "steps": steps_since, "step_time_s": dt / steps_since, "images_per_s": steps_since * global_batch / dt,
                    "global_batch": global_batch, **{f"lr_{k}": v for k, v in lr.items()},
                }
                if is_gan:
                    last["ema_decay"] = ema_decay_at(cfg, step - 1)
                if dist.is_main():
                    metrics_file.write(json.dumps({"step": step, "epoch": epoch, **last}) + "\n")
                    metrics_file.flush()
                    for k, v in last.items():
                        tb.add_scalar(f"train/{k}", v, step)
                    shown = {k: f"{v:.3g}" for k, v in last.items() if k in last_local}
                    bar.set_postfix(shown | {"img/s": f"{last['images_per_s']:.0f}"}, refresh=False)
                interval.reset()
                t_log, steps_since = time.perf_counter(), 0
            if dist.is_main():
                bar.update(1)
                t_io = time.perf_counter()
                want_samples = done or (cfg.sample_every > 0 and step % cfg.sample_every == 0)
                want_ckpt = done or (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0)
                if want_samples or want_ckpt:
                    prepare_ema()
                if want_ckpt and not is_gan:
                    fit_prior()
                if want_samples:
                    write_samples()
                if want_ckpt:
                    final_ckpt = save_checkpoint()
                t_log += time.perf_counter() - t_io  # step time / throughput exclude sample and checkpoint writes
            signum = None if done else stop.agreed(dist.allreduce_mean)
            if signum is not None:  # finish here: rank 0 checkpoints this step (unless it just did), every rank stops
                if dist.is_main() and not want_ckpt:
                    prepare_ema()
                    if not is_gan:
                        fit_prior()
                    final_ckpt = save_checkpoint()
                dist.barrier()
                raise TrainInterrupted(signum, step, str(final_ckpt) if dist.is_main() and final_ckpt else None)
            if done:
                break
        if step_in_epoch >= spe:
            epoch, step_in_epoch = epoch + 1, 0
    if bar is not None:
        bar.close()

    if cfg.debug_probe:
        d = run_dir / "probe"
        d.mkdir(parents=True, exist_ok=True)
        trained = {k: n for k, n in raw.items() if k != "G_ema"}
        probe = {
            "rank": rank, "world_size": world, "backend": backend.value, "step": step, "steps_per_epoch": spe,
            "num_rows": loader.num_rows, "ids": ids_seen, "param_sha256": param_digest(trained),
            "param_sum": float(sum(p.detach().double().sum() for n in trained.values() for p in n.parameters())),
            "local_metrics": last_local, "averaged_metrics": {k: last[k] for k in last_local},
        }
        (d / f"rank-{rank}.json").write_text(json.dumps(probe))
    dist.barrier()
    ep, sie = (epoch + 1, 0) if step_in_epoch >= spe else (epoch, step_in_epoch)
    return TrainResult(rank, world, step, ep, sie, last, str(final_ckpt) if final_ckpt else None, resumed_from)
