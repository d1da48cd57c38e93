"""GPU slots: which GPUs are visible, and that concurrent jobs never hold the same one.

Fake GPU ids come from ``CAUSAL_KL_GPUS`` on this CPU box; the evidence is the kernel's own
record of who holds which lock (``/proc/locks``) and the intervals the processes report.
"""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from causal_kl import gpu
from causal_kl.errors import CausalKLError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSAL_KL_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    monkeypatch.setattr(gpu, "_original_visible", gpu._UNSET)
    # acquire_slot narrows this process's CUDA_VISIBLE_DEVICES to its slot's GPU: put it back for the tests after
    # (setenv first, so that the undo restores the variable's state before the test even where it was unset)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    return tmp_path / "rt"


def test_visible_gpus(monkeypatch, runtime):
    monkeypatch.setenv("CAUSAL_KL_GPUS", "0,1,2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert gpu.visible_gpus() == ["0", "1", "2"]  # the override wins
    monkeypatch.delenv("CAUSAL_KL_GPUS")
    assert gpu.visible_gpus() == ["5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa12,GPU-bb34")
    assert gpu.visible_gpus() == ["GPU-aa12", "GPU-bb34"]
    for none in ("", "-1", "NoDevFiles"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", none)
        assert gpu.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(runtime))  # no nvidia-smi: a CPU box
    assert gpu.visible_gpus() == []


def test_cpu_pseudo_slot_and_cuda_without_gpus(monkeypatch, runtime):
    monkeypatch.setenv("CAUSAL_KL_GPUS", "")
    with gpu.acquire_slot("auto") as slot:
        assert (slot.name, slot.gpu, slot.device) == ("cpu", None, "cpu")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(CausalKLError, match="device: cuda was asked for but no GPU is visible"):
        gpu.acquire_slot("cuda")
    monkeypatch.setenv("CAUSAL_KL_GPUS", "0,1")
    with gpu.acquire_slot("cpu") as slot:  # device: cpu on a GPU box takes the CPU slot
        assert slot.name == "cpu"



@pytest.mark.parametrize("override, cuda_visible", [("", "0"), ("0", None), (None, "-1"), (None, "1,0")])
def test_the_parse_time_device_check_sees_the_gpus_the_slots_hand_out(override, cuda_visible, monkeypatch, runtime):
    """``device: cuda`` is refused when the workflow is parsed (``checks.check_device``) exactly where taking a GPU slot
    would fail at run time: ``CAUSAL_KL_GPUS`` overrides ``CUDA_VISIBLE_DEVICES`` for both (checks.py had a copy of
    visible_gpus that read CUDA_VISIBLE_DEVICES only)."""
    from causal_kl.checks import check_device

    monkeypatch.setenv("PATH", str(runtime))  # no nvidia-smi: only the variables say which GPUs there are
    for name, value in (("CAUSAL_KL_GPUS", override), ("CUDA_VISIBLE_DEVICES", cuda_visible)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        with gpu.acquire_slot("cuda", timeout_s=1):
            slot_refused = False
    except CausalKLError:
        slot_refused = True
    monkeypatch.setattr(gpu, "_original_visible", gpu._UNSET)  # the variables as they were before the slot narrowed them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible or "")
    if cuda_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    try:
        check_device("cuda", "run.yaml")
        check_refused = False
    except CausalKLError as e:
        assert str(e).startswith("run.yaml: device:") and "no visible GPU" in str(e), e
        check_refused = True
    assert check_refused == slot_refused == (override == "" or cuda_visible == "-1")

def test_slot_sets_cuda_visible_devices_and_frees_on_release(monkeypatch, runtime):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    a = gpu.acquire_slot("cuda")
    assert (a.name, os.environ["CUDA_VISIBLE_DEVICES"]) == ("gpu-3", "3")
    b = gpu.acquire_slot("cuda")  # the same process sees both GPUs again, and 3 is held
    assert (b.name, os.environ["CUDA_VISIBLE_DEVICES"]) == ("gpu-7", "7")
    with pytest.raises(TimeoutError):
        gpu.acquire_slot("cuda", timeout_s=0.3)
    a.release()
    c = gpu.acquire_slot("cuda", timeout_s=1)
    assert c.name == "gpu-3"
    b.release()
    c.release()


def test_slots_named_last_are_tried_last_in_that_order(monkeypatch, runtime):
    """The model server names the slots where another run's server is in use (the latest last): a free slot
    without one is taken first; with all named, the one named longest ago is tried first."""
    monkeypatch.setenv("CAUSAL_KL_GPUS", "0,1,2")
    with gpu.acquire_slot("cuda", last=["gpu-0"]) as slot:
        assert (slot.name, os.environ["CUDA_VISIBLE_DEVICES"]) == ("gpu-1", "1")
    with gpu.acquire_slot("cuda", last=["gpu-2", "gpu-0", "gpu-1"]) as slot:
        assert slot.name == "gpu-2"
        with gpu.acquire_slot("cuda", last=["gpu-2", "gpu-0", "gpu-1"]) as second:  # a held one is skipped, as ever
            assert second.name == "gpu-0"


HOLDER = textwrap.dedent("""
    import os, sys, time
    from causal_kl import gpu
    out = sys.argv[1]
    slot = gpu.acquire_slot("cuda")
    t0 = time.monotonic()
    with open(out, "w") as f:
        f.write(f"{slot.name} {os.environ['CUDA_VISIBLE_DEVICES']} {os.getpid()} {t0!r}\\n")
    time.sleep(float(sys.argv[2]))
    t1 = time.monotonic()
    slot.release()
    with open(out, "a") as f:
        f.write(f"{t1!r}\\n")
""")


def _flock_holders(lock_dir: Path) -> dict[str, set[int]]:
    """slot name -> pids holding an exclusive FLOCK on its lock file, from /proc/locks (the kernel's view)."""
    inodes = {p.stat().st_ino: p.stem for p in lock_dir.glob("*.lock")}
    held: dict[str, set[int]] = {}
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        inode = int(parts[5].split(":")[2])
        if inode in inodes:
            held.setdefault(inodes[inode], set()).add(int(parts[4]))
    return held


def test_concurrent_processes_never_share_a_slot(tmp_path, runtime):
    """9 processes, 3 fake GPUs: at most 3 hold a slot at once, never two the same, each sees only its GPU."""
    env = dict(os.environ, CAUSAL_KL_GPUS="0,1,2", PYTHONPATH=str(ROOT), CAUSAL_KL_RUNTIME_DIR=str(runtime))
    outs = [tmp_path / f"p{i}.txt" for i in range(9)]
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(o), "0.6"], env=env) for o in outs]
    lock_dir = runtime / "local" / "slots"
    snapshots = []
    deadline = time.monotonic() + 30
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if lock_dir.is_dir():
            snapshots.append(_flock_holders(lock_dir))
        time.sleep(0.05)
    assert all(p.wait(timeout=30) == 0 for p in procs)
    records = []
    for o in outs:
        first, second = o.read_text().splitlines()
        name, visible, pid, t0 = first.split()
        records.append((name, visible, int(pid), float(t0), float(second)))
    assert {r[0] for r in records} == {"gpu-0", "gpu-1", "gpu-2"}
    for name, visible, *_ in records:
        assert name == f"gpu-{visible}"  # the job sees exactly its slot's GPU
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if a[0] == b[0]:
                assert a[4] <= b[3] or b[4] <= a[3], f"{a} and {b} held {a[0]} at the same time"
    # the kernel's view: never two holders of one slot's lock, never more than 3 held, holders are our processes
    pids = {r[2] for r in records}
    assert any(snapshots), "never saw a held lock"
    for snap in snapshots:
        assert all(len(holders) == 1 for holders in snap.values()), snap
        assert len(snap) <= 3
        assert set().union(*snap.values()) <= pids
    # 9 jobs on 3 slots with 0.6 s each: they had to queue (at least 3 rounds)
    span = max(r[4] for r in records) - min(r[3] for r in records)
    assert span >= 3 * 0.6 - 0.05
