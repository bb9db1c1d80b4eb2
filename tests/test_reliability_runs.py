"""Reliability issue #30: a run's output_dir lock (deleted, replaced or symlinked lock files; `gad-trl soda` / `seqkd`
take it too), tools that hang or return too much during training, secrets in errors, the orphaned server of
`with_server`, two runs sharing one vLLM server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from tests.gad_helpers import TINY_SEQKD, make_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SODA = os.path.join(REPO, "recipes", "tiny", "soda.yaml")


def _hold_lock_in_another_process(out):
    """A process holding `out`'s lock (like a running run); returns it once it holds it."""
    out.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from gad_trl.preflight import OutputDirLock
        OutputDirLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


# ------------------------------------------------------------------------------------------ the output_dir lock


@pytest.mark.timeout(300)
def test_a_lock_deleted_during_training_is_retaken_and_the_run_ends_and_saves(tiny_model_dir, tmp_path, caplog):
    """Deleting .gad_trl.lock under a run made its release crash (FileNotFoundError) before the final save."""
    from transformers import TrainerCallback

    from gad_trl.preflight import OutputDirLock

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


def _locked(lock) -> bool:
    try:
        lock.acquire()
    except RuntimeError:
        return True
    lock.release()
    return False


def test_another_run_on_a_deleted_lock_is_reported_and_its_lock_left_alone(tmp_path, caplog):
    from gad_trl.preflight import OutputDirLock

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
    from gad_trl.preflight import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / ".gad_trl.lock").symlink_to(target)
    with pytest.raises(RuntimeError, match="symbolic link.*Delete the link"):
        OutputDirLock(str(out)).acquire()
    assert target.read_text() == "keep me"


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
