"""Offline evaluation of a checkpoint: ``evaluate(EvalConfig) -> dict`` (the metrics JSON), see docs/evaluation.md.

Sets (all from one seeded pool of P real rows, training.features.read_pool;
n = min(num_samples, floor(P * (1 - extractor_fraction)) // 2)):
  A = pool[0:n]    the real reference the samples are compared with
  B = pool[n:2n]   a disjoint real sample of the same size: metric(A, B) is the real-data floor of each metric
  E = pool[2n:P]   the rows the domain network trains on (at least extractor_fraction of the pool), never in A or
                   B: the judge has not seen the reference it judges against. With `features_from` it trains on
                   that dataset's pool instead (and A, B may use the whole pool). The metrics JSON names E
                   (`domain_network.trained_on`: dataset, rows, digest of their ids, overlap with A and B by id).
  G = n samples    latents z = randn(n, z_dim) from a CPU generator seeded with `seed`; a class-conditional
                   model (cdcgan, or a VAE whose prior was fitted per class) is asked for A's labels (the data's
                   class proportions, and per class as many samples as A has)
Metrics, in one feature space (training.features): FID and KID (torchmetrics), precision / recall
(Kynkaenniemi et al. 2019) and coverage (Naeem et al. 2020) with k-NN radii (scikit-learn); class-conditional: accuracy of
the requested label by the domain classifier, overall and per class, and per-class recall / coverage; VAE: ELBO in
nats and bits/dim and the reconstruction error (posterior mean) on A.

Distribution (training.dist): each rank generates / extracts its contiguous slice [r*n//W, (r+1)*n//W) of every
set; the slices are gathered in rank order, so rank 0 computes the metrics on exactly the arrays one process
would have and writes the JSON. The domain network is trained by rank 0 (the others wait, then load its cache).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from training import checkpoint, dist, features, losses, models, sample
from training.data import from_model_output, to_model_input
from training.dist import Backend
from training.features import FeatureKind


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    checkpoint: str                         # a checkpoint file, or RUN/ (its newest valid checkpoint)
    data: str                               # dataset root OUT (manifest.json): the real images
    num_samples: int = 10000                # n per set (capped so that A, B and E fit in the pool)
    features: FeatureKind = FeatureKind.AUTO
    inception_weights: str | None = None    # local file; nothing is downloaded
    seed: int = 0                           # pool order, latents, domain-network training, KID subsets
    k: int = 3                              # neighbourhood size of precision / recall / coverage
    kid_subsets: int = 100
    kid_subset_size: int = 1000             # capped at n
    batch_size: int = 256                   # per rank, generation and feature extraction
    max_real: int = 20000                   # real rows read into memory (the pool) per dataset
    feature_epochs: int = 3                 # domain network training epochs
    extractor_fraction: float = 0.2         # share of the pool (at least) kept for training the domain network
    features_from: str | None = None        # train the domain network on this dataset instead (same size, classes)
    backend: Backend = Backend.AUTO
    out: str | None = None                  # metrics JSON path (default: RUN/<checkpoint stem>.metrics.json)
    progress: bool = True                   # tqdm bars on rank 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", FeatureKind(self.features))
        object.__setattr__(self, "backend", Backend(self.backend))
        for name in ("num_samples", "k", "kid_subsets", "kid_subset_size", "batch_size", "max_real", "feature_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < self.k + 1:
            raise ValueError(f"num_samples must be > k = {self.k}, got {self.num_samples}")
        if not 0.0 < self.extractor_fraction < 1.0:
            raise ValueError(f"extractor_fraction must be in (0, 1), got {self.extractor_fraction}")


# ----------------------------------------------------------------------------- the statistics
class _Precomputed(nn.Module):
    """torchmetrics' `feature` module when the features are already computed: the identity, with its width."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    m = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), reset_real_features=True, sync_on_compute=False)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    return float(m.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018) over random subsets (torchmetrics):
    (mean, std over subsets). Subsets come from torch's global RNG, so it runs under a forked, seeded RNG."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        m = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size, sync_on_compute=False)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (scikit-learn, exact): (N,) float64."""
    from sklearn.neighbors import NearestNeighbors

    a = x.double().numpy()
    dist_, _ = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a)  # column 0 is the row itself
    return torch.from_numpy(dist_[:, k])


def _within_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(P,) bool: point p lies in at least one ball (centre c, radius radii[c]). Chunked: P x C distances at most chunk x C."""
    out = []
    c = centres.double()
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk].double(), c)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def manifold_metrics(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) and coverage (Naeem et al. 2020).

    precision = share of fake samples inside the real manifold (union of k-NN balls of the real set);
    recall    = share of real samples inside the fake manifold;
    coverage  = share of real samples whose own k-NN ball holds at least one fake sample."""
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    return {
        "precision": float(_within_any_ball(fake, real, r_real).double().mean()),
        "recall": float(_within_any_ball(real, fake, r_fake).double().mean()),
        "coverage": _coverage(real, fake, r_real),
    }


def _coverage(real: torch.Tensor, fake: torch.Tensor, r_real: torch.Tensor, chunk: int = 2048) -> float:
    hits = []
    f = fake.double()
    for i in range(0, real.shape[0], chunk):
        d = torch.cdist(real[i:i + chunk].double(), f)  # (chunk, F)
        hits.append((d.min(dim=1).values <= r_real[i:i + chunk]))
    return float(torch.cat(hits).double().mean())


def vae_elbo_terms(vae: models.VAE, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (B,): the ELBO in nats and the posterior-mean reconstruction SSE, x in [-1, 1].

    The decoder is p(x|z) = N(decode(z), sigma^2 I) on the [-1, 1] scale with the VAE's own scale
    ``vae.log_sigma`` (training/losses.py: the calibrated decoder, sigma^2 = 1/2 in checkpoints from before it). So
    log p(x|z) = -SSE / (2 sigma^2) - (D / 2) log(2 pi sigma^2), and
    ELBO = log p(x|z) at z = mu + sigma_z * eps (one sample) - KL(q(z|x) || N(0, I)), with D = C*H*W."""
    mu, logvar = vae.encode(x)
    nll = losses.gaussian_nll(x, vae.decode(vae.reparameterize(mu, logvar, eps)).float(), vae.log_sigma.float())
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1)
    elbo = -nll - kl
    recon_sse = (vae.decode(mu).float() - x).pow(2).flatten(1).sum(1)
    sigma = vae.log_sigma.float().exp().expand(x.shape[0])
    return {"elbo": elbo.double(), "recon_sse": recon_sse.double(), "kl": kl.double(), "sigma": sigma.double()}


def bits_per_dim(elbo_nats: float, dims: int) -> float:
    """-ELBO in bits per dimension on the 8-bit pixel scale [0, 256): x_256 = (x + 1) * 127.5 divides the density
    by 127.5 per dimension, so log p_256 = log p - D log 127.5."""
    return (-elbo_nats + dims * math.log(127.5)) / (dims * math.log(2.0))


# ----------------------------------------------------------------------------- distribution helpers
def _slice(n: int) -> tuple[int, int]:
    r, w = dist.get_rank(), dist.get_world_size()
    return r * n // w, (r + 1) * n // w


def gather_rows(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate every rank's rows in rank order, on every rank (W broadcasts through training.dist, each rank
    passing an object of the same type so Horovod's names match)."""
    w = dist.get_world_size()
    if w == 1:
        return local
    parts = [dist.broadcast_object({k: v.cpu() for k, v in local.items()}, root=r) for r in range(w)]
    return {k: torch.cat([p[k] for p in parts]) for k in local}


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not (progress and dist.is_main()), leave=False)


def _map_batches(n: int, batch: int, fn: Callable[[int, int], dict[str, torch.Tensor]], desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """fn(lo, hi) over this rank's slice of range(n) in batches, results gathered over ranks in rank order."""
    lo, hi = _slice(n)
    out: dict[str, list[torch.Tensor]] = {}
    with _bar(hi - lo, desc, progress) as bar:
        for i in range(lo, hi, batch):
            for k, v in fn(i, min(hi, i + batch)).items():
                out.setdefault(k, []).append(v)
            bar.update(min(hi, i + batch) - i)
    if not out:  # more ranks than rows: an empty slice still takes part in the gather
        out = {k: [v[:0]] for k, v in fn(0, 1).items()}
    return gather_rows({k: torch.cat(v) for k, v in out.items()})


# ----------------------------------------------------------------------------- the job
def _resolve_checkpoint(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        found = checkpoint.find_latest_valid(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no valid checkpoint under {checkpoint.checkpoint_dir(p)}")
        return found[0]
    return p


def default_output(ckpt: Path) -> Path:
    """RUN/<stem>.metrics.json for RUN/checkpoints/<stem>.pt, else beside the file."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / f"{ckpt.stem}.metrics.json"


def split_pool(cfg: EvalConfig, pool: features.Pool) -> tuple[int, features.Pool]:
    """(n, E): the size of A and B, and the rows the domain network trains on, disjoint from A = pool[0:n] and
    B = pool[n:2n]. With `features_from`, E is that dataset's pool, which must hold images of the same shape and,
    for a classifier, the same classes."""
    rows = pool.images.shape[0]
    if cfg.features_from is None:
        n = min(cfg.num_samples, int(rows * (1.0 - cfg.extractor_fraction)) // 2)
        return n, pool.rows(2 * n)
    other = features.read_pool(cfg.features_from, cfg.max_real, cfg.seed)
    if other.images.shape[1:] != pool.images.shape[1:]:
        raise ValueError(f"--features-from {cfg.features_from} holds {tuple(other.images.shape[1:])} images, "
                         f"{cfg.data} holds {tuple(pool.images.shape[1:])}")
    if (pool.labels is None) != (other.labels is None) or other.classes != pool.classes:
        raise ValueError(f"--features-from {cfg.features_from} has classes {list(other.classes)[:12]}, "
                         f"{cfg.data} has {list(pool.classes)[:12]}: a classifier must know the same classes")
    return min(cfg.num_samples, rows // 2), other


def _build_extractor(cfg: EvalConfig, extractor_rows: features.Pool, manifest_id: str, weights: Path | None,
                     need_classifier: bool) -> tuple[features.Extractor, features.DomainExtractor | None]:
    domain = None
    if weights is None or need_classifier:
        tcfg = features.DomainTraining(seed=cfg.seed, epochs=cfg.feature_epochs)
        with dist.main_process_first():  # rank 0 trains and caches; the others then load the cache
            net, info = features.load_or_train_domain(cfg.data, extractor_rows, tcfg,
                                                      progress=cfg.progress and dist.is_main())
        domain = features.DomainExtractor(net, info, manifest_id, cfg.seed)
    main = features.InceptionExtractor(weights, manifest_id) if weights is not None else domain
    return main, domain


def _trained_on(extractor_rows: features.Pool, pool: features.Pool, n: int) -> dict[str, Any]:
    """What the domain network trained on (a cached network too: its cache is named by these rows' ids), and how
    many of those rows are in A or B, by image id: 0, unless `features_from` names a dataset that shares images."""
    return {"data": extractor_rows.data, "manifest_id": extractor_rows.manifest_id, "rows": int(extractor_rows.images.shape[0]),
            "ids_sha256_12": extractor_rows.ids_digest(),
            "pool_rows": f"[{2 * n}, {pool.images.shape[0]})" if extractor_rows.data == pool.data else "all (features_from)",
            "reference_rows_overlap": len(set(extractor_rows.ids) & set(pool.ids[:2 * n]))}


def _reference(cfg: EvalConfig, ext: features.Extractor, pool: features.Pool, n: int) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Features of A = pool[0:n] and B = pool[n:2n], cached once per (dataset, extractor, n, seed)."""
    path = features.cache_dir(cfg.data) / f"{ext.key}.ref-n{n}-s{cfg.seed}.pt"
    cached = dist.broadcast_object(path.is_file())  # rank 0 decides, so every rank takes the same branch
    if cached:
        ref = torch.load(path, map_location="cpu", weights_only=True)
        return ref, path, True
    imgs = pool.images[: 2 * n]
    ref_all = _map_batches(2 * n, cfg.batch_size, lambda lo, hi: {"f": ext.features(imgs[lo:hi])},
                           f"[evaluate] real features ({ext.kind})", cfg.progress)
    ref = {"A": ref_all["f"][:n].contiguous(), "B": ref_all["f"][n:].contiguous()}
    if dist.is_main():
        features._atomic_save(ref, path)
    return ref, path, False


def _manifold_with_floor(real_a, real_b, fake, k) -> dict[str, dict[str, float]]:
    got, floor = manifold_metrics(real_a, fake, k), manifold_metrics(real_a, real_b, k)
    return {m: {"value": got[m], "real_floor": floor[m]} for m in got}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate cfg.checkpoint against cfg.data; every rank returns the metrics dict, rank 0 also writes the JSON."""
    t0 = time.perf_counter()
    dist.init(cfg.backend)
    world = dist.get_world_size()
    weights = features.resolve_inception_weights(cfg.features, cfg.inception_weights)  # fail before any work
    ckpt = _resolve_checkpoint(cfg.checkpoint)
    payload = checkpoint.load(ckpt)
    spec, net, classes = sample.load_sampler(ckpt)  # EMA generator / VAE, eval mode, CPU
    pool = features.read_pool(cfg.data, cfg.max_real, cfg.seed)
    _, c, r, _ = pool.images.shape
    if (c, r) != (spec.channels, spec.resolution):
        raise ValueError(f"{ckpt} makes {spec.channels}x{spec.resolution}px images, {cfg.data} holds {c}x{r}px")
    n, extractor_rows = split_pool(cfg, pool)
    if n < cfg.k + 1:
        raise ValueError(f"{cfg.data}: {pool.images.shape[0]} real rows give sets of {n}, need more than k = {cfg.k}")
    conditional = sample.by_label(net, spec)  # a cdcgan, or a VAE whose prior was fitted per class
    if conditional and pool.labels is None:
        raise ValueError(f"{ckpt} is a class-conditional model but {cfg.data} has no labels")
    ext, domain = _build_extractor(cfg, extractor_rows, pool.manifest_id, weights, need_classifier=conditional)
    dist.print0(f"[evaluate] {ckpt} ({spec.kind.value}, step {payload['step']}) vs {cfg.data}: n={n} per set "
                f"(pool {pool.images.shape[0]} of {pool.num_rows} rows), features {ext.kind}, world {world}",
                file=sys.stderr)  # stdout carries only the table or the JSON
    ref, ref_path, ref_cached = _reference(cfg, ext, pool, n)

    # Samples: one latent per index from a CPU generator, so any world size draws the same n images.
    z = torch.randn(n, spec.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    labels = pool.labels[:n].clone() if conditional else None
    gen_fn = net.generate if isinstance(net, models.VAE) else net

    @torch.no_grad()
    def gen_batch(lo: int, hi: int) -> dict[str, torch.Tensor]:
        imgs = from_model_output(gen_fn(z[lo:hi], None if labels is None else labels[lo:hi]).float())
        out = {"f": ext.features(imgs)}
        if conditional:
            out["pred"], out["conf"] = _predict(domain, imgs)
        return out

    gen = _map_batches(n, cfg.batch_size, gen_batch, "[evaluate] samples -> features", cfg.progress)
    if conditional:  # the classifier's confidence on real rows B: the floor of the samples' confidence
        real_b = pool.images[n:2 * n]
        gen["real_conf"] = _map_batches(n, cfg.batch_size, lambda lo, hi: {"c": _predict(domain, real_b[lo:hi])[1]},
                                        "[evaluate] real -> classifier", cfg.progress)["c"]

    vae_rows = None
    if spec.kind == models.ModelKind.VAE:
        eps = torch.randn(n, spec.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
        with torch.no_grad():
            vae_rows = _map_batches(n, cfg.batch_size, lambda lo, hi: vae_elbo_terms(net, to_model_input(pool.images[lo:hi]), eps[lo:hi]),
                                    "[evaluate] VAE ELBO", cfg.progress)

    result: dict[str, Any] = {}
    if dist.is_main():
        result = _metrics(cfg, ckpt, payload, spec, pool, n, ext, domain, ref, ref_path, ref_cached, gen, labels, vae_rows, classes)
        if domain is not None:
            result["domain_network"] = {"trained_on": _trained_on(extractor_rows, pool, n)}
        result["timing_s"] = round(time.perf_counter() - t0, 2)
        out = Path(cfg.out) if cfg.out else default_output(ckpt)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out)
        result["metrics_json"] = str(out)
    result = dist.broadcast_object(result)
    dist.barrier()
    return result


def _metrics(cfg, ckpt, payload, spec, pool, n, ext, domain, ref, ref_path, ref_cached, gen, labels, vae_rows, classes) -> dict[str, Any]:
    A, B, G = ref["A"], ref["B"], gen["f"]
    kid_g = kid(A, G, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    kid_f = kid(A, B, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    metrics: dict[str, Any] = {
        "fid": {"value": fid(A, G), "real_floor": fid(A, B)},
        "kid": {"value": kid_g[0], "std": kid_g[1], "real_floor": kid_f[0], "real_floor_std": kid_f[1]},
        **_manifold_with_floor(A, B, G, cfg.k),
    }
    res: dict[str, Any] = {
        "checkpoint": str(ckpt), "step": int(payload["step"]), "model": spec.kind.value,
        "checkpoint_manifest_id": payload.get("manifest_id"), "data": cfg.data, "data_manifest_id": pool.manifest_id,
        "same_dataset": payload.get("manifest_id") == pool.manifest_id,
        "num_samples": n, "requested_num_samples": cfg.num_samples, "seed": cfg.seed, "k": cfg.k,
        "world_size": dist.get_world_size(),
        "extractor": {**ext.info, "key": ext.key, "dim": ext.dim},
        "reference": {"cache": str(ref_path), "cached": ref_cached, "pool_rows": int(pool.images.shape[0]),
                      "dataset_rows": pool.num_rows, "max_real": cfg.max_real,
                      "sets": "A = pool[0:n] is compared with the samples; B = pool[n:2n] gives the real floors"},
        "metrics": metrics,
    }
    if labels is not None:
        res["conditional"] = _conditional(cfg, A, B, G, labels, pool.labels[n:2 * n], gen["pred"], domain, classes)
        res["conditional"]["mean_confidence"] = {
            "value": float(gen["conf"].double().mean()), "real_floor": float(gen["real_conf"].double().mean()),
            "what": "mean over samples of the domain classifier's largest class probability (whatever the class)"}
    if vae_rows is not None:
        d = spec.channels * spec.resolution ** 2
        elbo = float(vae_rows["elbo"].mean())
        res["vae"] = {
            "elbo_nats": elbo, "bits_per_dim": bits_per_dim(elbo, d), "kl_nats": float(vae_rows["kl"].mean()),
            "recon_mse": float(vae_rows["recon_sse"].mean() / d), "dims": d, "images": n,
            "decoder_sigma": float(vae_rows["sigma"][0]),
            "likelihood": "Gaussian decoder N(decode(z), sigma^2 I) on the [-1, 1] pixel scale, sigma = decoder_sigma; one posterior "
                          "sample per image; bits/dim on the 8-bit scale; recon_mse = per-pixel MSE of decode(mu) on [-1, 1]",
            "split": "A (rows the VAE trained on)" if res["same_dataset"] else "A (another dataset than the checkpoint's)",
        }
    return res


@torch.no_grad()
def _predict(domain: features.DomainExtractor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain classifier's class and its probability per image."""
    conf, pred = domain.logits(images).softmax(1).max(1)
    return pred, conf


def _conditional(cfg, A, B, G, labels_a, labels_b, pred, domain, classes) -> dict[str, Any]:
    floor_acc = domain.info.get("heldout_per_class_accuracy", {})
    per_class: dict[str, Any] = {}
    for ci, name in enumerate(classes):
        ma, mb = labels_a == ci, labels_b == ci
        row: dict[str, Any] = {"n": int(ma.sum()),
                               "accuracy": float((pred[ma] == ci).double().mean()) if ma.any() else None,
                               "accuracy_real_floor": floor_acc.get(name)}
        if int(ma.sum()) > cfg.k and int(mb.sum()) > cfg.k:
            mm = _manifold_with_floor(A[ma], B[mb], G[ma], cfg.k)
            row |= {"recall": mm["recall"]["value"], "recall_real_floor": mm["recall"]["real_floor"],
                    "coverage": mm["coverage"]["value"], "coverage_real_floor": mm["coverage"]["real_floor"]}
        per_class[name] = row
    known = labels_a >= 0
    return {
        "class_accuracy": {"value": float((pred[known] == labels_a[known]).double().mean()),
                           "real_floor": domain.info.get("heldout_accuracy"),
                           "real_floor_source": "the domain classifier's accuracy on its held-out real split"},
        "per_class": per_class,
        "classifier": domain.info.get("cache"),
    }


def format_table(res: dict[str, Any]) -> str:
    rows = [("metric", "model", "real floor")]
    for name, m in res["metrics"].items():
        rows.append((name, f"{m['value']:.4g}", f"{m['real_floor']:.4g}"))
    if "conditional" in res:
        ca = res["conditional"]["class_accuracy"]
        rows.append(("class accuracy", f"{ca['value']:.4g}", f"{ca['real_floor']:.4g}" if ca["real_floor"] is not None else "-"))
        mc = res["conditional"]["mean_confidence"]
        rows.append(("mean confidence", f"{mc['value']:.4g}", f"{mc['real_floor']:.4g}"))
        for cname, row in res["conditional"]["per_class"].items():
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3g}"
            rec = "-" if "recall" not in row else f"{row['recall']:.3g}/{row['recall_real_floor']:.3g}"
            rows.append((f"  class {cname} acc, recall/floor", acc, rec))
    if "vae" in res:
        v = res["vae"]
        rows += [("ELBO (nats)", f"{v['elbo_nats']:.2f}", "-"), ("bits/dim", f"{v['bits_per_dim']:.4f}", "-"),
                 ("recon MSE [-1,1]", f"{v['recon_mse']:.4g}", "-")]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
    ex = res["extractor"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"features: {ex['kind']} ({ex.get('cache') or ex.get('weights')}), n = {res['num_samples']} per set, "
                 f"k = {res['k']}; JSON: {res.get('metrics_json')}")
    return "\n".join(lines)
