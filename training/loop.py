"""The training loop: ``train(config) -> TrainResult``, for DCGAN, conditional DCGAN and VAE.

One step, in explicit phases (stylegan2-ada style), each with its own optimizer:
  GAN:  D step  D(cat[real, G(z).detach()]) in ONE forward -> d_loss -> opt_D
        G step  D frozen (requires_grad False), unwrapped D on G(z') -> g_loss -> opt_G
        EMA     G_ema <- lerp(G_ema, G, 1 - ema_decay); buffers copied
  VAE:  (recon, mu, logvar) = V(x, eps) -> recon + beta * KL -> opt_V
Latents / VAE noise of a step come from a generator seeded with (seed, rank, step), so a resumed run draws
exactly what the uninterrupted run would have drawn, on every rank, independent of any global RNG.

Distribution goes through training.dist only (the loop never reads environment variables); data through
training.data.open_loader, each rank its own disjoint share and the same number of steps per epoch.
Only rank 0 writes (config.json, metrics.jsonl, TensorBoard, samples, checkpoints); with
``debug_probe`` every rank writes RUN/probe/rank-<r>.json for the multi-process tests.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checkpoint, dist, losses, models, sample
from training.config import Precision, Resume, TrainConfig
from training.data import Batch, LoaderConfig, open_loader, to_model_input

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainResult:
    rank: int
    world_size: int
    step: int                       # steps done when train() returned (== total steps)
    epoch: int                      # data position after the last step
    step_in_epoch: int
    metrics: dict[str, float]       # the last logged (rank-averaged) metrics
    checkpoint: str | None          # the final checkpoint (rank 0), else None
    resumed_from: str | None        # the checkpoint this run started from, if any


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


class _Run:
    """State of one train() call, so the phases stay short functions."""

    def __init__(self, config: TrainConfig):
        self.cfg = config
        self.backend = dist.init(config.backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = dist.device()
        self.run_dir = Path(config.run_dir)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.loader = open_loader(
            LoaderConfig(
                data=config.data, reader=config.reader, batch_size=config.batch_size, rank=self.rank,
                world_size=self.world, seed=config.seed, shuffle=True, with_ids=config.debug_probe,
            )
        )
        try:
            self.manifest = self.loader.manifest
            self.spe = self.loader.steps_per_epoch
            self.total = config.steps if config.steps is not None else (config.epochs or 1) * self.spe
            self.global_batch = config.batch_size * self.world
            self.spec = models.ModelSpec(
                kind=config.model, resolution=self.manifest.resolution, channels=self.manifest.channels,
                z_dim=config.z_dim, base_channels=config.base_channels, num_classes=len(self.manifest.classes),
            )
            self.is_gan = config.model != models.ModelKind.VAE
            self.amp_dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(config.precision)
            self.channels_last = self.device.type == "cuda" if config.channels_last is None else config.channels_last
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == Precision.FP16)
            self._build()
        except BaseException:
            self.loader.close()  # its reader threads would outlive a failed setup
            raise

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (and broadcast anyway)
        nets = models.build(self.spec)
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        for n in nets.values():
            n.to(self.device, memory_format=fmt).train()
        scale = self.world if cfg.lr_scale_with_world else 1
        self.lr = {"G": cfg.lr_g * scale, "D": cfg.lr_d * scale, "V": cfg.lr_g * scale}
        self.raw = dict(nets)  # unwrapped networks (checkpoints, EMA, frozen-D forward)
        self.opt = {
            k: dist.wrap_optimizer(torch.optim.Adam(n.parameters(), lr=self.lr[k], betas=(cfg.beta1, cfg.beta2)), n, f"{k}.")
            for k, n in nets.items()
        }
        if self.is_gan:
            self.raw["G_ema"] = copy.deepcopy(nets["G"]).eval().requires_grad_(False)
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.resumed_from = self._maybe_resume()
        dist.broadcast_state(list(self.raw.values()), list(self.opt.values()))
        self.net = {k: dist.wrap_model(n) for k, n in nets.items()}  # DDP (after the broadcast) or as is

    def _maybe_resume(self) -> str | None:
        """Rank 0 picks and loads the checkpoint; position and choice are broadcast, weights by broadcast_state."""
        cfg, found = self.cfg, None
        if dist.is_main():
            if cfg.resume == Resume.AUTO.value:
                found = checkpoint.find_latest_valid(self.run_dir)
            elif cfg.resume == Resume.NONE.value:
                existing = checkpoint.list_checkpoints(self.run_dir)
                if existing:
                    raise FileExistsError(
                        f"{self.run_dir} already has checkpoints ({existing[-1].name}, ...); "
                        "pass --resume auto (or a checkpoint path) to continue, or use a fresh --run-dir"
                    )
            else:
                found = (Path(cfg.resume), checkpoint.load(cfg.resume))
            if found is not None:
                self._load(*found)
        pos = dist.broadcast_object((self.step, self.epoch, self.step_in_epoch, str(found[0]) if found else None))
        self.step, self.epoch, self.step_in_epoch, path = pos
        return path

    def _load(self, path: Path, ck: dict[str, Any]) -> None:
        if ck.get("manifest_id") != self.manifest.manifest_id:
            raise ValueError(
                f"{path} was trained on dataset manifest {ck.get('manifest_id')}, "
                f"{self.cfg.data} has manifest {self.manifest.manifest_id}"
            )
        spec = dataclasses.asdict(self.spec) | {"kind": self.spec.kind.value}
        if ck["model_spec"] != spec:
            raise ValueError(f"{path} holds model {ck['model_spec']}, this run builds {spec}")
        for k, sd in ck["models"].items():
            self.raw[k].load_state_dict(sd)
        for k, sd in ck["optimizers"].items():
            self.opt[k].load_state_dict(sd)
            for group in self.opt[k].param_groups:  # learning rates come from the config, not the checkpoint
                group["lr"] = self.lr[k]
        if ck["scaler"]:  # empty when the run was not fp16
            self.scaler.load_state_dict(ck["scaler"])
        checkpoint.set_rng_state(ck["rng"])
        self.step, self.epoch, self.step_in_epoch = ck["step"], ck["epoch"], ck["step_in_epoch"]
        print(f"[train] resumed from {path} at step {self.step} (epoch {self.epoch}, step {self.step_in_epoch})", flush=True)

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = to_model_input(batch.images.to(self.device, non_blocking=True))
        # The loader hands out channels_last views; models get the layout this run chose.
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        labels = None
        if self.spec.kind == models.ModelKind.CDCGAN:
            if batch.labels is None:
                raise ValueError("cdcgan needs label_index in the dataset; this dataset has no labels")
            labels = batch.labels.to(self.device, non_blocking=True)
        return x, labels

    def gan_step(self, x: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, x.shape[0]
        G, D, G_raw, D_raw = self.net["G"], self.net["D"], self.raw["G"], self.raw["D"]
        z = torch.randn(b, self.spec.z_dim, generator=gen, device=self.device)
        # D step: one forward over [real; fake] so DDP syncs D's gradients once; fake is detached.
        with torch.no_grad(), self._autocast():
            fake = G_raw(z, labels)
        both_labels = torch.cat([labels, labels]) if labels is not None else None
        with self._autocast():
            logits = D(torch.cat([x, fake.to(x.dtype)]), both_labels)
            loss_d = losses.d_loss(cfg.gan_loss, logits[:b], logits[b:])
        self.opt["D"].zero_grad()  # set_to_none (torch default; horovod takes no argument)
        self.scaler.scale(loss_d).backward()
        dist.optimizer_step(self.opt["D"], self.scaler)
        # G step: D frozen and unwrapped, so no D gradients are computed or synchronised.
        z2 = torch.randn(b, self.spec.z_dim, generator=gen, device=self.device)
        D_raw.requires_grad_(False)
        try:
            with self._autocast():
                loss_g = losses.g_loss(cfg.gan_loss, D_raw(G(z2, labels), labels))
            self.opt["G"].zero_grad()  # set_to_none (torch default; horovod takes no argument)
            self.scaler.scale(loss_g).backward()
            dist.optimizer_step(self.opt["G"], self.scaler)
        finally:
            D_raw.requires_grad_(True)
        self.scaler.update()
        self._ema_update()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": logits[:b].detach().float().mean(), "d_fake": logits[b:].detach().float().mean()}

    @torch.no_grad()
    def _ema_update(self) -> None:
        ema, g = self.raw["G_ema"], self.raw["G"]
        for pe, p in zip(ema.parameters(), g.parameters()):
            pe.lerp_(p, 1.0 - self.cfg.ema_decay)
        for be, b in zip(ema.buffers(), g.buffers()):
            be.copy_(b)

    def vae_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        eps = torch.randn(x.shape[0], self.spec.z_dim, generator=gen, device=self.device)
        with self._autocast():
            recon, mu, logvar = self.net["V"](x, eps)
            rec, kl = losses.vae_terms(x, recon, mu, logvar)
            loss = rec + self.cfg.beta_kl * kl
        self.opt["V"].zero_grad()  # set_to_none (torch default; horovod takes no argument)
        self.scaler.scale(loss).backward()
        dist.optimizer_step(self.opt["V"], self.scaler)
        self.scaler.update()
        return {"loss": loss.detach(), "recon": rec.detach(), "kl": kl.detach()}

    # ------------------------------------------------------------------ outputs (rank 0)
    def _position(self) -> tuple[int, int]:
        """(epoch, step_in_epoch) of the next batch; an exhausted epoch is the start of the next one."""
        return (self.epoch + 1, 0) if self.step_in_epoch >= self.spe else (self.epoch, self.step_in_epoch)

    def save_checkpoint(self) -> Path:
        epoch, sie = self._position()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": epoch,
            "step_in_epoch": sie,
            "models": {k: n.state_dict() for k, n in self.raw.items()},
            "optimizers": {k: o.state_dict() for k, o in self.opt.items()},
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": self.cfg.to_dict(),
            "model_spec": dataclasses.asdict(self.spec) | {"kind": self.spec.kind.value},
            "manifest_id": self.manifest.manifest_id,
            "classes": list(self.manifest.classes),  # label_index -> label, so `generate --label NAME` works
            "world_size": self.world,
        }
        return checkpoint.save(self.run_dir, self.step, payload, keep=self.cfg.keep_ckpts)

    @torch.no_grad()
    def write_samples(self) -> None:
        sampler = models.sampler(self.raw)
        was = {k: n.training for k, n in self.raw.items()}
        for n in self.raw.values():
            n.eval()
        try:
            imgs = sampler(self.fixed_z, self.fixed_labels).float()
            path = sample.save_grid(imgs, self.run_dir / "samples" / f"samples-{self.step:08d}.png")
            self.tb.add_image("samples", np.asarray(sample.make_grid(imgs)), self.step, dataformats="HWC")
            if not self.is_gan and self.fixed_real is not None:
                recon, _, _ = self.raw["V"](self.fixed_real, torch.zeros(self.fixed_real.shape[0], self.spec.z_dim, device=self.device))
                pair = torch.stack([self.fixed_real, recon.float()], dim=1).flatten(0, 1)  # original, recon, ...
                sample.save_grid(pair, self.run_dir / "samples" / f"recon-{self.step:08d}.png", nrow=2 * min(4, self.fixed_real.shape[0]))
            print(f"[train] step {self.step}: wrote {path}", flush=True)
        finally:
            for k, n in self.raw.items():
                n.train(was[k])

    def _prepare_outputs(self) -> None:
        self.fixed_z = torch.randn(self.cfg.num_samples, self.spec.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed + 1)).to(self.device)
        self.fixed_labels = None
        if self.spec.kind == models.ModelKind.CDCGAN:
            self.fixed_labels = (torch.arange(self.cfg.num_samples) % self.spec.num_classes).to(self.device)
        self.fixed_real = None
        self.tb = None
        if not dist.is_main():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(self.cfg.to_json() + "\n")
        self.tb = SummaryWriter(str(self.run_dir / "tb"))
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        if not self.is_gan:  # a fixed real batch for reconstructions: the first batch of epoch 0 on rank 0
            it = self.loader.epoch(0)
            first = next(it)
            it.close()
            self.fixed_real, _ = self._input(Batch(images=first.images[:8], labels=None, ids=None))

    def _log(self, metrics: dict[str, float]) -> None:
        row = {"step": self.step, "epoch": self.epoch, **metrics}
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(f"train/{k}", v, self.step)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        dist.print0(f"[train] config:\n{cfg.to_json()}")
        dist.print0(
            f"[train] backend={self.backend.value} world={self.world} device={self.device} model={self.spec.kind.value} "
            f"res={self.spec.resolution} ch={self.spec.channels} steps/epoch={self.spe} total={self.total} "
            f"global_batch={self.global_batch} (= {cfg.batch_size} x {self.world}) precision={cfg.precision.value}"
        )
        # Every rank takes batch_size rows per step (checked per batch below) from its disjoint share, so one
        # epoch consumes steps_per_epoch x global batch rows, which the dataset must hold.
        if self.spe * self.global_batch > self.loader.num_rows:
            raise AssertionError(
                f"{self.spe} steps/epoch x global batch {self.global_batch} (= {cfg.batch_size} x {self.world} ranks) "
                f"> {self.loader.num_rows} rows: the loader's shares are not disjoint"
            )
        with dist.main_process_first():
            self._prepare_outputs()
        ids_seen: list[str] = []
        last: dict[str, float] = {}
        local_last: dict[str, float] = {}
        final_ckpt = None
        t_log, steps_since = time.perf_counter(), 0
        while self.step < self.total:
            for batch in self.loader.epoch(self.epoch, start_step=self.step_in_epoch):
                if batch.images.shape[0] != cfg.batch_size:
                    raise AssertionError(f"loader gave {batch.images.shape[0]} rows, expected batch_size {cfg.batch_size}")
                if cfg.debug_probe and batch.ids is not None:
                    ids_seen.extend(batch.ids)
                x, labels = self._input(batch)
                gen = _step_generator(cfg.seed, self.rank, self.step, self.device)
                out = self.gan_step(x, labels, gen) if self.is_gan else self.vae_step(x, gen)
                self.step += 1
                self.step_in_epoch += 1
                steps_since += 1
                done = self.step >= self.total
                if done or (cfg.log_every > 0 and self.step % cfg.log_every == 0):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t_log
                    local_last = {k: float(v) for k, v in out.items()}
                    last = dist.allreduce_mean(local_last)
                    last |= {"step_time_s": dt / steps_since, "images_per_s": steps_since * self.global_batch / dt,
                             "global_batch": self.global_batch, **{f"lr_{k}": v for k, v in self.lr.items() if k in self.opt}}
                    if dist.is_main():
                        self._log(last)
                    t_log, steps_since = time.perf_counter(), 0
                if dist.is_main():
                    t_io = time.perf_counter()
                    if done or (cfg.sample_every > 0 and self.step % cfg.sample_every == 0):
                        self.write_samples()
                    if done or (cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0):
                        final_ckpt = self.save_checkpoint()
                    t_log += time.perf_counter() - t_io  # step time / throughput exclude sample and checkpoint writes
                if done:
                    break
            if self.step_in_epoch >= self.spe:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
        if cfg.debug_probe:
            self._write_probe(ids_seen, local_last, last)
        dist.barrier()
        epoch, sie = self._position()
        return TrainResult(
            self.rank, self.world, self.step, epoch, sie, last, str(final_ckpt) if final_ckpt else None, self.resumed_from
        )

    def close(self) -> None:
        """Release the loader's threads and the main process's writers; safe after a failure at any point."""
        for name in ("tb", "metrics_file"):
            if getattr(self, name, None) is not None:
                getattr(self, name).close()
        self.loader.close()

    def _write_probe(self, ids: list[str], local: dict[str, float], averaged: dict[str, float]) -> None:
        d = self.run_dir / "probe"
        d.mkdir(parents=True, exist_ok=True)
        trained = {k: n for k, n in self.raw.items() if k != "G_ema"}
        probe = {
            "rank": self.rank, "world_size": self.world, "backend": self.backend.value, "step": self.step,
            "steps_per_epoch": self.spe, "num_rows": self.loader.num_rows, "ids": ids,
            "param_sha256": param_digest(trained),
            "param_sum": float(sum(p.detach().double().sum() for n in trained.values() for p in n.parameters())),
            "local_metrics": local, "averaged_metrics": {k: averaged[k] for k in local},
        }
        (d / f"rank-{self.rank}.json").write_text(json.dumps(probe))


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model` on `config.data` for `config.steps` steps (or epochs); see the module docstring."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        run = _Run(config)
        try:
            return run.run()
        finally:
            run.close()
    finally:  # a process-wide switch: leave it as found (tests train several times in one process)
        torch.use_deterministic_algorithms(was_deterministic)
