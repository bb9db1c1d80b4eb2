"""`gad_trl.run_folder`: a run's output folder. The lock (two runs never share one; a deleted, replaced or symlinked
lock file; soda and seqkd take it too), the run key (a checkpoint resumes only the run that wrote it), complete
checkpoints and the resume flag, states read as data only (a crafted pickle is refused), and a disk that fills up
during a save: `explain_disk_full` turns the writers' errors (OSError ENOSPC / EDQUOT, safetensors' "No space left on
device (os error 28)", torch.save's errno-less "unexpected pos") into a `DiskFullError` that says "no space left on
device", names the file being written and says what to do."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import Dataset

from gad_trl import run_folder
from gad_trl.run_folder import DiskFullError, disk_full_errno, explain_disk_full
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import REPO, TINY_SEQKD, crafted, make_trainer

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


def _locked(lock) -> bool:
    try:
        lock.acquire()
    except RuntimeError:
        return True
    lock.release()
    return False


def _hold_lock_in_another_process(out):
    """A process holding `out`'s lock (like a running run); returns it once it holds it."""
    out.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from gad_trl.run_folder import OutputDirLock
        OutputDirLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


TINY_SODA = os.path.join(REPO, "recipes", "tiny", "soda.yaml")


def test_bare_resume_flag_parses_as_latest_and_true_is_not_a_path(tmp_path, caplog):
    from gad_trl.cli.train import parse_args
    from gad_trl.run_folder import resolve_resume_checkpoint

    tiny = str(REPO / "recipes" / "tiny" / "gad.yaml")
    for argv in (["--config", tiny, "--resume_from_checkpoint"], ["--resume_from_checkpoint", "--config", tiny]):
        _, training_args, _ = parse_args(argv)
        assert str(training_args.resume_from_checkpoint).lower() == "true"
    for step, complete in ((2, True), (4, True), (6, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"trunc')  # killed while writing it
    with caplog.at_level("WARNING"):
        for value in (True, "True", "true"):
            assert resolve_resume_checkpoint(value, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-6" in caplog.text and "checkpoint-4" in caplog.text
    assert resolve_resume_checkpoint("false", str(tmp_path)) is None
    with pytest.raises(ValueError, match="not a complete checkpoint.*checkpoint-2"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))
    with pytest.raises(ValueError, match="no complete checkpoint-N"):
        resolve_resume_checkpoint(True, str(tmp_path / "empty"))


def test_resume_true_skips_a_checkpoint_half_written_by_a_kill(tiny_model_dir, tmp_path, caplog):
    import shutil

    first = make_trainer(tiny_model_dir, tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    first.train()
    # A SIGKILL during the next save: model files written, trainer_state.json never.
    partial = tmp_path / "checkpoint-2"
    shutil.copytree(tmp_path / "checkpoint-1", partial)
    (partial / "trainer_state.json").unlink()
    (partial / "optimizer.pt").write_bytes(b"\x00")
    (tmp_path / "checkpoint-1" / "discriminator_scheduler.pt").unlink()
    resumed = make_trainer(tiny_model_dir, tmp_path, max_steps=2)
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2
    assert f"Skipping incomplete checkpoint {partial}" in caplog.text
    assert "discriminator_scheduler.pt is missing" in caplog.text


def test_load_checkpoint_file_refuses_pickled_code_and_names_the_file(tmp_path):
    from gad_trl.run_folder import load_checkpoint_file

    path, marker = tmp_path / "discriminator_optimizer.pt", tmp_path / "pwned"
    crafted(path, marker)
    with pytest.raises(ValueError, match="discriminator_optimizer.pt.*not loaded"):
        load_checkpoint_file(str(path))
    assert not marker.exists()
    torch.save({"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}, path)
    assert load_checkpoint_file(str(path))["param_groups"][0]["lr"] == 1e-3  # plain states still load


def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(tmp_path):
    import subprocess
    import sys
    import textwrap

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gad_trl.run_folder import OutputDirLock
        lock = OutputDirLock({str(out)!r}); lock.acquire(); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} on .*another output_dir"):
            OutputDirLock(str(out)).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = OutputDirLock(str(out))  # the killed holder's lock is gone with it: never stale
    lock.acquire()
    lock.release()
    assert not (out / ".gad_trl.lock").exists()


def test_train_holds_the_lock_and_a_read_only_output_dir_fails_at_the_start(tiny_model_dir, tmp_path):
    import os

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    trainer = make_trainer(tiny_model_dir, out, max_steps=1)
    seen = []
    trainer.add_callback(type("Probe", (__import__("transformers").TrainerCallback,), {
        "on_step_end": lambda self, *a, **k: seen.append(_locked(OutputDirLock(str(out))))})())
    trainer.train()
    assert seen == [True]  # a second run would have been refused during training
    assert not (out / ".gad_trl.lock").exists()

    a_file = tmp_path / "a_file"  # a folder that cannot be created, whoever runs the test
    a_file.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        make_trainer(tiny_model_dir, a_file / "run", max_steps=1)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, 0o500)
    try:
        if not os.access(read_only, os.W_OK):  # (root writes to read-only folders: only the case above applies)
            with pytest.raises(PermissionError, match="not writable"):
                make_trainer(tiny_model_dir, read_only / "run", max_steps=1)
    finally:
        os.chmod(read_only, 0o700)


def test_resume_checks_the_run_and_a_finished_run_trains_no_more(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    first = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    first.train()
    checkpoint = out / "checkpoint-2"
    disc_before = (checkpoint / "discriminator" / "model.safetensors").read_bytes()
    again = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    result = again.train(resume_from_checkpoint=True)
    assert result.global_step == 2 and not (out / "checkpoint-3").exists()
    assert (checkpoint / "discriminator" / "model.safetensors").read_bytes() == disc_before
    assert "already at step 2 of max_steps=2" in caplog.text

    other_data = make_trainer(tiny_model_dir, out, rows=tiny_gad_rows(8, seed=5), max_steps=2)
    with pytest.raises(ValueError, match="written by another run .*train_data_digest"):
        other_data.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    other_model = make_trainer(tiny_model_dir, out, max_steps=2)
    other_model.model.config._name_or_path = "someone/another-student"
    with pytest.raises(ValueError, match="written by another run .*model: checkpoint"):
        other_model.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    shorter = make_trainer(tiny_model_dir, out, max_steps=1)  # checkpoint-2 is past this run's end: nothing to train
    assert shorter.train(resume_from_checkpoint=str(checkpoint)).global_step == 2

    caplog.clear()
    make_trainer(tiny_model_dir, out, max_steps=1).train()  # a new run into a folder with another run's checkpoints
    assert "already holds checkpoints of another run (checkpoint-2)" in caplog.text


# ------------------------------------------------------------------------- 4. the resume key covers every row
def test_resume_key_sees_a_change_at_row_1500(tmp_path):
    import json

    from gad_trl.run_folder import RUN_KEY_NAME, check_run_key, run_key
    from gad_trl.tiny import tiny_gad_rows

    rows = tiny_gad_rows(8) * 250  # 2000 rows
    key = run_key("student", Dataset.from_list(rows), 10)
    (tmp_path / RUN_KEY_NAME).write_text(json.dumps(key))
    check_run_key(str(tmp_path), run_key("student", Dataset.from_list(rows), 10))  # same data: accepted
    changed = [dict(r) for r in rows]
    changed[1500]["teacher_response"] += " (edited)"
    with pytest.raises(ValueError, match="written by another run .*train_data_digest"):
        check_run_key(str(tmp_path), run_key("student", Dataset.from_list(changed), 10))
    # A checkpoint written before this key (digest of the first 1000 rows under `train_digest`) is compared on the rest.
    (tmp_path / RUN_KEY_NAME).write_text(json.dumps({"model": "student", "train_rows": 2000, "train_digest": "old",
                                                     "max_steps": 10}))
    check_run_key(str(tmp_path), run_key("student", Dataset.from_list(changed), 10))


@pytest.mark.timeout(300)
def test_a_lock_deleted_during_training_is_retaken_and_the_run_ends_and_saves(tiny_model_dir, tmp_path, caplog):
    """Deleting .gad_trl.lock under a run made its release crash (FileNotFoundError) before the final save."""
    from transformers import TrainerCallback

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    lock_file = out / ".gad_trl.lock"
    trainer = make_trainer(tiny_model_dir, out, max_steps=3)
    locked_after = []

    class DeleteTheLock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                lock_file.unlink()
            elif state.global_step == 2:  # after step 1's log: re-taken
                locked_after.append(_locked(OutputDirLock(str(out))))

    trainer.add_callback(DeleteTheLock())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "was deleted while this run held it" in caplog.text
    assert locked_after == [True]  # a second run is refused again
    assert not lock_file.exists()
    trainer.save_model(str(out))
    assert (out / "model.safetensors").exists()


def test_another_run_on_a_deleted_lock_is_reported_and_its_lock_left_alone(tmp_path, caplog):
    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    ours = OutputDirLock(str(out))
    ours.acquire()
    (out / ".gad_trl.lock").unlink()
    other = _hold_lock_in_another_process(out)
    try:
        with caplog.at_level(logging.ERROR):
            assert f"pid {other.pid}" in ours.verify()
        assert "ANOTHER RUN" in caplog.text and "own output_dir" in caplog.text
        ours.release()  # never raises, and leaves the other run's lock in place
        assert f"pid {other.pid}" in (out / ".gad_trl.lock").read_text()
        with pytest.raises(RuntimeError, match="in use by another run"):
            OutputDirLock(str(out)).acquire()
    finally:
        other.kill()
        other.wait()


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / ".gad_trl.lock").symlink_to(target)
    with pytest.raises(RuntimeError, match="symbolic link.*Delete the link"):
        OutputDirLock(str(out)).acquire()
    assert target.read_text() == "keep me"


def test_a_command_whose_output_dir_another_run_took_saves_then_fails_naming_it(tmp_path):
    import types

    from gad_trl.cli.utils import train_and_save
    from gad_trl.run_folder import hold_output_dir

    out = tmp_path / "run"
    saved, others = [], []

    class Trainer:  # a trainer whose run sees its lock file deleted and another run start in its output_dir
        callback_handler = types.SimpleNamespace(callbacks=[])
        accelerator = types.SimpleNamespace(print=lambda *args: None)

        def add_callback(self, callback):
            self.callback_handler.callbacks.append(callback)

        def train(self, resume_from_checkpoint=None):
            (out / ".gad_trl.lock").unlink()
            others.append(_hold_lock_in_another_process(out))

        def save_model(self, output_dir):
            saved.append(output_dir)

    args = types.SimpleNamespace(output_dir=str(out), resume_from_checkpoint=None, push_to_hub=False)
    try:
        with hold_output_dir(str(out)), pytest.raises(RuntimeError, match=r"The model is saved to .*another run "
                                                                          r"\(pid \d+ on .*own output_dir"):
            train_and_save(Trainer(), types.SimpleNamespace(dataset_name=None), args, "gad")
        assert saved == [str(out)]  # saved first
        assert f"pid {others[0].pid}" in (out / ".gad_trl.lock").read_text()  # the other run's lock is left alone
    finally:
        for other in others:
            other.kill()
            other.wait()


@pytest.mark.parametrize("command, recipe", [("soda", TINY_SODA), ("seqkd", TINY_SEQKD)])
def test_soda_and_seqkd_take_the_output_dir_lock_before_anything_else(tmp_path, command, recipe):
    """Two identical `gad-trl soda` runs both ran (and wrote one SODA sample cache together)."""
    import importlib

    out = tmp_path / "run"
    holder = _hold_lock_in_another_process(out)
    try:
        run = importlib.import_module(f"gad_trl.cli.{command}").run
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} "):
            run(["--config", recipe, "--output_dir", str(out), "--report_to", "none",
                 "--model_name_or_path", str(tmp_path / "no-model")])  # refused before the model is looked at
    finally:
        holder.kill()
        holder.wait()

