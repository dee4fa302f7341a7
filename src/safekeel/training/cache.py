"""`--reference-cache`: the reference's K-logits of both views, computed once before training.

The reference is frozen, so its logits on S for every training example are fixed: computing them once
makes a PACT step cost what an SFT step costs (DESIGN §3). Layout of a cache directory (keyed by a
fingerprint of model, tokenizer, safety tokens and tokenised data):

    shard-00000.safetensors  full [ΣA, K] f16, lse [ΣA] f32, post [ΣP, K] f16; metadata: ids, A, P
    ...
    meta.json                written last: the fingerprint, K, counts (the cache is complete)

Values are stored relative to each position's largest K-logit (z - max z), so the dominant tokens sit near
0 where float16 is most precise. Softmax over S, the dispersion, the gate mix and log(mass on S) =
logsumexp_S(z) - lse are all unchanged by a per-position shift, so nothing else needs the shift.
Shards are written atomically (temporary file + rename), so an interrupted pass resumes at the first
missing shard; under DDP the shards are split between ranks. Readers look examples up by id, lazily
(safetensors slices), so each rank reads only its own examples. No pickle anywhere.
"""

from __future__ import annotations

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
from safekeel.io_utils import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "safekeel.reference_cache/1"
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
    os.replace(tmp, path)


def build(root: Path, fp: str, examples: list[dict], reference, collator, *, batch_size: int = 8,
          device=None, process_index: int = 0, world_size: int = 1, progress: bool = True) -> ReferenceCache:
    """Compute (or resume) the cache for `examples` with `reference` (a `SafetyReference`) and open it.

    collator: a `Collator` without cache. Each rank computes the shards i with i % world_size == rank."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
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
        _write_shard(root / f"shard-{i:05d}.safetensors", [by_id[e["id"]] for e in shards[i]], fp)
    bar.close()
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:  # every rank's shards are on disk
        torch.distributed.barrier()
    missing = [i for i in range(len(shards)) if not _shard_ok(root, i, fp)]
    if missing:
        raise SafekeelError(f"reference cache {root} is missing shards {missing[:5]} after the cache pass")
    if process_index == 0:
        atomic_write_json(root / "meta.json", {
            "format": FORMAT, "fingerprint": fp, "examples": len(examples), "shards": len(shards),
            "k": int(reference.ids.numel()), "seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if distributed:  # rank 0's manifest is written
        torch.distributed.barrier()
    return ReferenceCache(root, fp)


def _shard_ok(root: Path, i: int, fp: str) -> bool:
    from safetensors import safe_open

    path = root / f"shard-{i:05d}.safetensors"
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("fingerprint") == fp
    except Exception:  # noqa: BLE001 - a damaged shard is recomputed
        return False


class ReferenceCache:
    """Read side: `entry(id)` -> (full [A, K], lse [A], post [P, K]) float32; `batch(ids, a_max)` for the collator."""

    def __init__(self, root: Path, fp: str):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise SafekeelError(f"reference cache {self.root} is incomplete (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
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
