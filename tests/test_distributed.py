"""Several processes train one model: sharding, the synchronised chunked step, the sharded evaluation, and the
context read from torchrun's and SLURM's environment. Real gloo process groups under real torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import numpy as np
import pytest
import torch

from lra.parallel.distributed import Distributed, rank_device, shard_bounds
from lra.parallel.place import Place, hydra_overrides_for_rank, place_from_env
from lra.run.batches import iterate_batches

HERE = Path(__file__).resolve().parent


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_shares_are_uneven_contiguous_and_cover_the_batch():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    for n in range(0, 12):
        for world in range(1, 5):
            taken = [i for r in range(world) for i in range(*shard_bounds(n, r, world))]
            assert taken == list(range(n))


def test_every_rank_takes_its_share_of_one_global_order():
    split = ddp_worker.split()
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(3))
    whole = [b["labels"].tolist() for b in iterate_batches(split, 5, order=order)]
    for world in (2, 3, 4):
        shares = [list(iterate_batches(split, 5, order=order, shard=(r, world))) for r in range(world)]
        for b, batch in enumerate(whole):
            parts = [shares[r][b] for r in range(world)]
            assert sorted(sum((p["labels"].tolist() for p in parts), [])) == sorted(batch)
            assert [p["labels"].shape[0] for p in parts] == [len(range(*shard_bounds(len(batch), r, world)))
                                                               for r in range(world)]
            for p in parts:  # an empty share is a well-formed batch of zero samples
                assert p["input_ids"].shape[0] == p["mask"].shape[0] == p["labels"].shape[0]


def test_place_from_torchrun_and_slurm_environments():
    assert place_from_env({}) is None
    assert place_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Place(1, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    assert place_from_env(slurm) is None  # an sbatch job without a rendezvous address: one process
    assert place_from_env({**slurm, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) == Place(3, 4, 1, "slurm")
    assert place_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_ADDR": "n", "MASTER_PORT": "1"}) is None
    assert place_from_env({**slurm, "SUBMITIT_EXECUTOR": "slurm"}) == Place(3, 4, 1, "submitit")
    assert place_from_env({**slurm, "SUBMITIT_EXECUTOR": "local"}) is None


def test_ranks_other_than_zero_get_a_throw_away_hydra_folder():
    assert hydra_overrides_for_rank({}) == []
    assert hydra_overrides_for_rank({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == []
    run_dir, subdir = hydra_overrides_for_rank({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    folder = Path(run_dir.removeprefix("hydra.run.dir="))
    assert folder.is_dir() and folder.name.startswith("lra-rank1-") and subdir == "hydra.output_subdir=null"


def test_rank_device_on_this_machine():
    assert rank_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device("auto", 1) == torch.device("cpu")
    else:
        assert rank_device("auto", 0) == torch.device("cuda", 0)


def test_one_process_context_is_inert():
    ctx = Distributed()
    assert ctx.is_main and not ctx.active and ctx.shard == (0, 1)
    assert ctx.all_reduce_sum([1, 2.5]) == [1.0, 2.5] and ctx.broadcast({"a": 1}) == {"a": 1}


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, pytest.param(3, marks=pytest.mark.long)])
def test_ranks_make_the_one_process_update(tmp_path, nproc):
    """Two epochs of SGD steps (global batches 5, 5, 5, 5, 1; chunks of 2; clipping) on 2 and 3 gloo ranks
    under torchrun end with the parameters, per-step losses and dev sums of one process."""
    out = tmp_path / "rank0.pt"
    done = torchrun(nproc, str(HERE / "ddp_worker.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(out, weights_only=False)
    one = ddp_worker.run(Distributed())
    assert ranks["world_size"] == nproc and one["world_size"] == 1 and ranks["backend"] == "gloo"
    assert ranks["dev"][1:] == one["dev"][1:] and ranks["dev"][2] == ddp_worker.N  # every dev sample once
    assert ranks["dev"][0] == pytest.approx(one["dev"][0], rel=1e-5)
    assert [s[1:] for s in ranks["losses"]] == [s[1:] for s in one["losses"]]
    assert np.allclose([s[0] for s in ranks["losses"]], [s[0] for s in one["losses"]], rtol=1e-5)
    moved = max((one["params"][k] - ddp_worker.model().state_dict()[k]).abs().max().item() for k in one["params"])
    assert moved > 1e-3  # the steps really changed the parameters
    diff = max((ranks["params"][k] - one["params"][k]).abs().max().item() for k in one["params"])
    print(f"{nproc} ranks vs 1 process: max parameter difference {diff:.2e}")
    assert diff < 1e-5


@pytest.mark.long
@pytest.mark.parametrize("attention", ["hrr-individual", "hrr-bundled", "hrr-quadratic", "tpr"])
def test_every_mechanism_trains_under_ddp(tmp_path, attention, monkeypatch):
    """Each mechanism's parameters all take part in the synchronised step (DDP fails on a parameter without a
    gradient), and 2 ranks stay as close to one process as one process with another chunk size does: float32
    rounding that lr 0.5 amplifies over ten steps (about 3e-2 for hrr-individual, 7e-3 for hrr-quadratic, 1e-7
    for the others, measured)."""
    out = tmp_path / "rank0.pt"
    done = torchrun(2, str(HERE / "ddp_worker.py"), str(out), "--attention", attention)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks, one = torch.load(out, weights_only=False), ddp_worker.run(Distributed(), attention)
    monkeypatch.setattr(ddp_worker, "CHUNK", ddp_worker.BATCH)
    other_chunk = ddp_worker.run(Distributed(), attention)
    spread = max((other_chunk["params"][k] - one["params"][k]).abs().max().item() for k in one["params"])
    diff = max((ranks["params"][k] - one["params"][k]).abs().max().item() for k in one["params"])
    assert ranks["dev"][2] == ddp_worker.N
    assert diff <= max(1e-5, 10 * spread), (diff, spread)
