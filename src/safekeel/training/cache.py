"""`--reference-cache`: the reference's K-logits of both views, computed once before training.

The reference is frozen, so its logits on S for every training example are fixed: computing them once
makes a PACT step cost what an SFT step costs (docs/design.md, "Making it fast"). Layout of a cache directory (keyed by a
fingerprint of model, tokenizer, safety tokens and tokenised data):

    shard-00000.safetensors  full [ΣA, K] f16, lse [ΣA] f32, post [ΣP, K] f16; metadata: ids, A, P
    shard-00000.sha256       the shard's sha256, computed from the bytes written
    ...
    meta.json                written last: the fingerprint, K, counts, each shard's sha256 (complete)

Values are stored relative to each position's largest K-logit (z - max z), so the dominant tokens sit near
0 where float16 is most precise. Softmax over S, the dispersion, the gate mix and log(mass on S) =
logsumexp_S(z) - lse are all unchanged by a per-position shift, so nothing else needs the shift.
Shards are written atomically (temporary file + rename), so an interrupted pass resumes at the first
missing shard; under DDP the shards are split between ranks. Nothing is trained on unverified: opening
a complete cache checks every shard against the sha256 in meta.json, and resuming an interrupted pass
checks each shard against its .sha256; a shard whose bytes changed or that was cut short is recomputed,
and a damaged meta.json (cut short, unparseable, an older format) means the whole cache is recomputed,
each with a warning. Readers look examples up by id, lazily
(safetensors slices), so each rank reads only its own examples. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safekeel.errors import SafekeelError
from safekeel.fingerprint import sha256_json
from safekeel.io_utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "safekeel.reference_cache/2"  # /2: sha256 per shard
SHARD_EXAMPLES = 512


def fingerprint(*, model_fp: dict, tokenizer_fp: str, safety_ids: list[int], examples: list[dict],
                extra: dict | None = None) -> str:
    """sha256 of everything the cached values depend on (model, tokens, each example's two token views)."""
    data = sha256_json([[e["id"], e["input_ids"], e["prompt_len"], e["post_ids"], e["post_len"]] for e in examples])
    return sha256_json({"format": FORMAT, "model": model_fp, "tokenizer": tokenizer_fp, "safety_ids": safety_ids,
                        "data": data, **(extra or {})})


def estimate_bytes(examples: list[dict], k: int) -> int:
    return sum(e["answer_len"] * (2 * k + 4) + e["post_len"] * 2 * k for e in examples)


def fits(examples: list[dict], k: int, root: Path) -> tuple[bool, str]:
    """Whether the cache fits on disk (at most half the free space): the `auto` rule."""
    need = estimate_bytes(examples, k)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    ok = need <= free // 2
    return ok, f"{need / 2**20:.1f} MiB needed, {free / 2**30:.1f} GiB free"


def _relative(z: torch.Tensor) -> torch.Tensor:
    """[N, K] float -> float16 of z - max_K z (clamped: -inf logits stay finite)."""
    return (z - z.max(-1, keepdim=True).values).clamp(min=-6e4).half()


def _write_shard(path: Path, entries: list[dict], fp: str) -> None:
    from safetensors.torch import save_file

    def cat(key, k):
        parts = [e[key] for e in entries if e[key].numel()]
        return torch.cat(parts) if parts else torch.zeros((0, k) if key != "lse" else (0,))

    k = entries[0]["full"].shape[-1]
    tensors = {"full": cat("full", k).contiguous(), "lse": cat("lse", k).float().contiguous(),
               "post": cat("post", k).contiguous()}
    meta = {"fingerprint": fp, "ids": json.dumps([e["id"] for e in entries]),
            "A": json.dumps([int(e["full"].shape[0]) for e in entries]),
            "P": json.dumps([int(e["post"].shape[0]) for e in entries])}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    digest = _digest(tmp)  # of the bytes written, before anything else can touch them
    _sum_path(path).unlink(missing_ok=True)  # a shard never sits beside another version's checksum
    os.replace(tmp, path)
    atomic_write_text(_sum_path(path), digest + "\n")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shard_path(root: Path, i: int) -> Path:
    return root / f"shard-{i:05d}.safetensors"


def _sum_path(shard: Path) -> Path:
    return shard.with_suffix(".sha256")


def _read_sum(shard: Path) -> str | None:
    try:
        return _sum_path(shard).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def build(root: Path, fp: str, examples: list[dict], reference, collator, *, batch_size: int = 8,
          device=None, process_index: int = 0, world_size: int = 1, progress: bool = True) -> ReferenceCache:
    """Compute (or resume) the cache for `examples` with `reference` (a `SafetyReference`) and open it.

    collator: a `Collator` without cache. Each rank computes the shards i with i % world_size == rank."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if process_index == 0:
        _drop_damaged(root, fp)
    if distributed:  # every rank sees what rank 0 kept
        torch.distributed.barrier()
    if (root / "meta.json").is_file():
        return ReferenceCache(root, fp)
    shards = [examples[i:i + SHARD_EXAMPLES] for i in range(0, len(examples), SHARD_EXAMPLES)]
    mine = [i for i in range(len(shards)) if i % world_size == process_index and not _shard_ok(root, i, fp)]
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(shards[i]) for i in mine), desc="reference cache", disable=not progress, leave=False)
    for i in mine:
        entries = []
        order = sorted(range(len(shards[i])), key=lambda j: len(shards[i][j]["input_ids"]))  # less padding
        for s in range(0, len(order), batch_size):
            items = [shards[i][j] for j in order[s:s + batch_size]]
            batch = {k: v.to(device) if device is not None else v for k, v in collator(items).items()}
            views = reference.views(batch, need_lse=True)
            for b, it in enumerate(items):
                a, p = it["answer_len"], it["post_len"]
                entries.append({"id": it["id"], "full": _relative(views["ref_full"][b, :a]).cpu(),
                                "lse": (views["ref_lse"][b, :a] - views["ref_full"][b, :a].max(-1).values).cpu(),
                                "post": _relative(views["ref_post"][b, :p]).cpu()})
            bar.update(len(items))
        by_id = {e["id"]: e for e in entries}
        _write_shard(_shard_path(root, i), [by_id[e["id"]] for e in shards[i]], fp)
    bar.close()
    if distributed:  # every rank's shards are on disk
        torch.distributed.barrier()
    missing = [i for i in range(len(shards)) if not _shard_ok(root, i, fp, verify=False)]
    if missing:
        raise SafekeelError(f"reference cache {root} is missing shards {missing[:5]} after the cache pass")
    if process_index == 0:
        atomic_write_json(root / "meta.json", {
            "format": FORMAT, "fingerprint": fp, "examples": len(examples), "shards": len(shards),
            "k": int(reference.ids.numel()), "seconds": round(time.perf_counter() - t0, 2),
            "sha256": [_read_sum(_shard_path(root, i)) for i in range(len(shards))],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if distributed:  # rank 0's manifest is written
        torch.distributed.barrier()
    return ReferenceCache(root, fp)


def _shard_ok(root: Path, i: int, fp: str, verify: bool = True) -> bool:
    """Shard i is there, for this fingerprint, with its checksum (and, if `verify`, bytes that match it)."""
    from safetensors import safe_open

    path = _shard_path(root, i)
    expected = _read_sum(path)
    if not path.is_file() or expected is None or (verify and _digest(path) != expected):
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("fingerprint") == fp
    except Exception:  # noqa: BLE001 - a damaged shard is recomputed
        return False


def _drop_damaged(root: Path, fp: str) -> None:
    """Before a complete cache is opened: remove what fails its checksum, so `build` recomputes it."""
    meta_path = root / "meta.json"
    if not meta_path.exists():
        return  # nothing yet, or an interrupted pass: the shards are checked one by one when resuming
    meta = _read_meta(meta_path)
    if meta is None:
        log.warning("reference cache %s: meta.json is damaged or from an older safekeel; recomputing the cache",
                    root)
        for path in [*root.glob("shard-*.safetensors"), *root.glob("shard-*.sha256"), meta_path]:
            path.unlink(missing_ok=True)
        return
    if meta.get("fingerprint") != fp:
        return  # another cache's directory: ReferenceCache refuses it
    bad = [i for i, digest in enumerate(meta["sha256"])
           if not _shard_path(root, i).is_file() or _digest(_shard_path(root, i)) != digest]
    if bad:
        log.warning("reference cache %s: shard(s) %s changed since they were written (checksum mismatch or cut "
                    "short); recomputing them", root, ", ".join(str(i) for i in bad))
        for i in bad:
            _shard_path(root, i).unlink(missing_ok=True)
            _sum_path(_shard_path(root, i)).unlink(missing_ok=True)
        meta_path.unlink()


def _read_meta(path: Path) -> dict | None:
    """meta.json, or None when it is cut short, unparseable, of another format or without checksums."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("shards"), int)
          and isinstance(meta.get("sha256"), list) and len(meta["sha256"]) == meta["shards"]
          and all(isinstance(d, str) for d in meta["sha256"]))
    return meta if ok else None


class ReferenceCache:
    """Read side: `entry(id)` -> (full [A, K], lse [A], post [P, K]) float32; `batch(ids, a_max)` for the collator."""

    def __init__(self, root: Path, fp: str):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise SafekeelError(f"reference cache {self.root} is incomplete (no meta.json)")
        meta = _read_meta(meta_path)
        if meta is None:
            raise SafekeelError(f"reference cache {self.root} has a damaged meta.json; `build` recomputes it")
        self.meta = meta
        if self.meta.get("fingerprint") != fp:
            raise SafekeelError(f"reference cache {self.root} was computed for other model/tokens/data")
        self.fp = fp
        self._index: dict[str, tuple[int, int, int, int, int]] | None = None
        self._handles: dict[int, object] = {}

    def _build_index(self) -> None:
        from safetensors import safe_open

        index = {}
        for i in range(self.meta["shards"]):
            with safe_open(str(self.root / f"shard-{i:05d}.safetensors"), "pt") as f:
                md = f.metadata()
            off_a = off_p = 0
            for rid, a, p in zip(json.loads(md["ids"]), json.loads(md["A"]), json.loads(md["P"])):
                index[rid] = (i, off_a, a, off_p, p)
                off_a, off_p = off_a + a, off_p + p
        self._index = index

    def _handle(self, shard: int):
        # opened lazily in the process that reads (DataLoader workers fork after construction)
        key = (os.getpid(), shard)
        if key not in self._handles:
            from safetensors import safe_open

            self._handles[key] = safe_open(str(self.root / f"shard-{shard:05d}.safetensors"), "pt")
        return self._handles[key]

    def __len__(self) -> int:
        return int(self.meta["examples"])

    def entry(self, rid: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._index is None:
            self._build_index()
        if rid not in self._index:
            raise SafekeelError(f"example {rid!r} is not in the reference cache {self.root}")
        shard, oa, a, op, p = self._index[rid]
        f = self._handle(shard)
        return (f.get_slice("full")[oa:oa + a].float(), f.get_slice("lse")[oa:oa + a].float(),
                f.get_slice("post")[op:op + p].float())

    def batch(self, ids: list[str], a_max: int) -> dict[str, torch.Tensor]:
        """Answer-frame tensors for a batch: ref_full, ref_post [B, a_max, K] and ref_lse [B, a_max]."""
        k = int(self.meta["k"])
        full = torch.zeros(len(ids), a_max, k)
        lse = torch.zeros(len(ids), a_max)
        post = torch.zeros(len(ids), a_max, k)
        for b, rid in enumerate(ids):
            z, s, zp = self.entry(rid)
            full[b, : z.shape[0]] = z
            lse[b, : s.shape[0]] = s
            post[b, : z.shape[0]] = z  # beyond the no-prompt view the mix uses the full view (c~ ~ 0 there)
            post[b, : zp.shape[0]] = zp
        return {"ref_full": full, "ref_post": post, "ref_lse": lse}
