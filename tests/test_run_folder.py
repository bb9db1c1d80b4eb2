"""A disk that fills up during a save: `gad_trl.run_folder.explain_disk_full` turns the writers' errors (OSError ENOSPC /
EDQUOT, safetensors' "No space left on device (os error 28)", torch.save's errno-less "unexpected pos") into a
`DiskFullError` that says "no space left on device", names the file being written and says what to do; everything
else passes through unchanged. Simulated (monkeypatched writers), plus the real thing on a 1 MiB tmpfs where this
process may mount one (root)."""

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch

from gad_trl import run_folder
from gad_trl.run_folder import DiskFullError, disk_full_errno, explain_disk_full

pytestmark = pytest.mark.timeout(300)

TORCH_WRITE_FAILED = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def no_space(filename=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([filename] if filename else []))


def test_enospc_from_open_names_the_file_and_the_fix(tmp_path):
    target = tmp_path / "checkpoint-2" / "trainer_state.json"
    with pytest.raises(DiskFullError) as info:
        with explain_disk_full(tmp_path):
            raise no_space(str(target))
    err = info.value
    text = str(err)
    assert "no space left on device" in text.lower() and str(target) in text
    assert "free on that file system)" in text and "save_total_limit" in text and "output_dir" in text
    assert err.errno == errno.ENOSPC and err.filename == str(target)
    assert isinstance(err, OSError) and isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC


def test_a_write_error_without_a_file_name_names_the_newest_file_of_the_folder(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    old = tmp_path / "checkpoint-1" / "model.safetensors"
    old.write_bytes(b"old")
    os.utime(old, (1, 1))
    being_written = tmp_path / "checkpoint-1" / "optimizer.pt"
    with pytest.raises(DiskFullError, match="while writing " + str(being_written)):
        with explain_disk_full(tmp_path):
            being_written.write_bytes(b"partial")
            raise no_space()  # as f.write / f.close raise it: no filename


def test_safetensors_and_quota_messages(tmp_path, monkeypatch):
    from safetensors import SafetensorError
    from safetensors import torch as safetensors_torch

    def full_save_file(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors_torch, "save_file", full_save_file)
    target = tmp_path / "model.safetensors"
    with pytest.raises(DiskFullError, match="No space left on device while writing") as info:
        with explain_disk_full(target):
            safetensors_torch.save_file({"w": torch.zeros(2)}, str(target))
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert isinstance(info.value.__cause__, SafetensorError)

    with pytest.raises(DiskFullError, match=r"(?i)no space left on device \(disk quota exceeded") as info:
        with explain_disk_full(target):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert info.value.errno == errno.EDQUOT


def test_torch_save_failure_counts_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK partial zip")
        raise RuntimeError(TORCH_WRITE_FAILED)

    monkeypatch.setattr(torch, "save", failing_save)
    target = tmp_path / "discriminator_optimizer.pt"
    monkeypatch.setattr(run_folder, "_free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(DiskFullError) as info:
        with explain_disk_full(tmp_path):
            torch.save({}, target)
    assert str(target) in str(info.value) and "10.0 MiB free" in str(info.value)
    assert "unexpected pos" in str(info.value)  # the writer's own words are kept

    monkeypatch.setattr(run_folder, "_free_bytes", lambda path: 100 * 2**30)  # plenty of space: not a disk full
    with pytest.raises(RuntimeError, match="unexpected pos") as info:
        with explain_disk_full(tmp_path):
            torch.save({}, target)
    assert not isinstance(info.value, DiskFullError)


def test_other_errors_and_inner_explanations_pass_through(tmp_path):
    with pytest.raises(PermissionError) as info:
        with explain_disk_full(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    assert not isinstance(info.value, DiskFullError)
    with pytest.raises(ValueError, match="bad value"):
        with explain_disk_full(tmp_path):
            raise ValueError("bad value")
    # nested (save_model inside _save_checkpoint): the inner, more precise explanation is kept as it is
    inner_path = tmp_path / "discriminator" / "model.safetensors"
    with pytest.raises(DiskFullError) as info:
        with explain_disk_full(tmp_path, hint="OUTER HINT"):
            with explain_disk_full(inner_path, hint="INNER HINT"):
                raise no_space()
    assert "INNER HINT" in str(info.value) and "OUTER HINT" not in str(info.value)
    assert info.value.filename == str(inner_path)
    assert disk_full_errno(ValueError("x")) is None
    # an errno found down the chain (an error raised while handling ENOSPC) counts
    try:
        try:
            raise no_space()
        except OSError:
            raise RuntimeError("serialization failed")
    except RuntimeError as err:
        assert disk_full_errno(err) == errno.ENOSPC


def test_a_checkpoint_save_that_fills_the_disk_says_so(tiny_model_dir, tmp_path, monkeypatch):
    """A GADTrainer checkpoint save whose optimizer file fills the disk (torch.save's errno-less error, the disk
    nearly full) fails with the file named and the fix, and the cut checkpoint is skipped by a resume."""
    from gad_trl import GADTrainer

    from tests.helpers.gad_helpers import make_trainer

    assert "_save_checkpoint" in GADTrainer.__dict__  # the whole checkpoint save is wrapped
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    real_save = torch.save

    def filling_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.basename(f) == "optimizer.pt":
            with open(f, "wb") as out:
                out.write(b"PK partial zip")
            raise RuntimeError(TORCH_WRITE_FAILED)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_save)
    monkeypatch.setattr(run_folder, "_free_bytes", lambda path: 3 * 2**20)
    with pytest.raises(DiskFullError) as info:
        trainer.train()
    text = str(info.value)
    written = tmp_path / "checkpoint-1" / "optimizer.pt"
    assert "no space left on device" in text.lower() and str(written) in text, text
    assert "save_total_limit" in text and "--resume_from_checkpoint skips it" in text
    assert run_folder.latest_complete_checkpoint(str(tmp_path)) is None  # the cut checkpoint-1 is not resumable


def _mount_tmpfs(path, size="1m") -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, timeout=30)
    return result.returncode == 0


def test_real_disk_full_on_a_tiny_tmpfs(tmp_path):
    small = tmp_path / "small"
    if not _mount_tmpfs(small):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated tests above cover the logic")
    try:
        from safetensors.torch import save_file

        big = {"w": torch.zeros(1024 * 1024)}  # 4 MiB on a 1 MiB file system
        def write_json(path):
            with open(path, "w") as f:
                json.dump({"x": "y" * (4 << 20)}, f)

        writers = {
            "optimizer.pt": lambda p: torch.save(big, p),
            "model.safetensors": lambda p: save_file(big, p),
            "trainer_state.json": write_json,
        }
        for name, write in writers.items():
            target = small / "checkpoint-1" / name
            target.parent.mkdir(exist_ok=True)
            with pytest.raises(DiskFullError) as info:
                with explain_disk_full(small):
                    write(str(target))
            assert "no space left on device" in str(info.value).lower(), (name, str(info.value))
            # safetensors removes its partial file: the folder it wrote into is named then
            named = target.parent if name == "model.safetensors" else target
            assert f"while writing {'into ' if named.is_dir() else ''}{named} (" in str(info.value), str(info.value)
            shutil.rmtree(small / "checkpoint-1")
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=30)
