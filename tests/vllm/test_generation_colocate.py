"""Colocated vLLM (`vllm_mode="colocate"`): TRL's default weight sync is refused on CPU before vLLM starts, naming
`vllm_weight_sync="reload"`; the reload sync goes through vLLM's layerwise reload; with it GADTrainer trains with the
real in-process engine and the engine serves the updated student. Run in a child process: vLLM initialises
torch.distributed and its engine in the process that builds it. Skipped where vLLM can't be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from datasets import Dataset
from trl.import_utils import is_vllm_available

from tests.helpers.gad_helpers import TRL_MODEL, make_args

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not is_vllm_available(), reason="vLLM is not installed (scripts/install_env.sh)")]

SCRIPT = textwrap.dedent('''
    import sys
    from datasets import Dataset
    from safetensors.torch import load_file
    from gad_trl import GADConfig, GADTrainer
    from gad_trl.tiny import tiny_gad_rows

    model_dir, output_dir = sys.argv[1], sys.argv[2]
    args = GADConfig(output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=2,
                     num_generations=2, max_completion_length=8, max_steps=2, save_strategy="no", beta=0.0,
                     learning_rate=1e-2, use_vllm=True, vllm_mode="colocate", vllm_weight_sync="reload",
                     vllm_max_model_length=256, disable_tqdm=True, warn_on_unhealthy_metrics=False)
    trainer = GADTrainer(model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8)))
    trainer.train()
    trainer.vllm_generation.sync_weights()  # the weights of the last step (a step's sync runs before its generation)
    engine = trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.get_model()
    name = "model.embed_tokens.weight"
    student = dict(trainer.model.named_parameters())[name].detach().float()
    served = dict(engine.named_parameters())[name][: student.shape[0]].float().cpu()
    initial = load_file(f"{model_dir}/model.safetensors")[name].float()
    print("SYNCS", trainer.vllm_generation.num_weight_syncs)
    print("MOVED", (student - initial).abs().max().item())
    print("SERVED_DIFF", (served - student).abs().max().item())
''')


def run_colocated(script: str, model_dir, output_dir, keys) -> dict[str, str]:
    """Run `script` (argv: model_dir, output_dir) in a child process, where vLLM may build its engine; the
    `KEY value` lines it prints for `keys`."""
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), str(output_dir)], env=env,
                          capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(line.split() for line in done.stdout.splitlines() if line.split()[:1] in [[key] for key in keys])


def test_colocated_reload_trains_and_the_engine_serves_the_updated_student(tiny_model_dir, tmp_path):
    values = run_colocated(SCRIPT, tiny_model_dir, tmp_path / "out", ("SYNCS", "MOVED", "SERVED_DIFF"))
    assert int(values["SYNCS"]) == 3
    # The engine holds the trained weights (to its bfloat16 rounding), not the initial ones the student moved from.
    assert float(values["SERVED_DIFF"]) < float(values["MOVED"]) / 10, values


# ------------------------------------------------------------------------------- 11. colocated vLLM on CPU
def test_colocate_on_cpu_with_trl_sync_is_refused_before_vllm_starts(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows

    args = make_args(tmp_path, use_cpu=True, use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ValueError, match=r"""colocate' on CPU needs vllm_weight_sync="reload".*'weight_loader'"""):
        GADTrainer(model=TRL_MODEL, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)))


def test_colocated_reload_goes_through_vllms_layerwise_reload(monkeypatch):
    """The colocated `reload` sync hands the student's (name, tensor) pairs to the worker's `reload_weights` (vLLM's
    layer-wise reload, which restores the loaders the CPU backend removed), re-ties tied layers, resets the cache."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    import torch

    from gad_trl.vllm.generation import ReloadVLLMGeneration

    embed = torch.nn.Parameter(torch.zeros(2, 2))
    model = torch.nn.Module()
    model.embed, model.head = torch.nn.Module(), torch.nn.Module()
    model.embed.weight = embed
    model.head.weight = embed  # tied
    received = {}

    def reload_weights(weights_iterator=None, is_checkpoint_format=True):
        received.update(dict(weights_iterator))
        model.head.weight = torch.nn.Parameter(torch.ones(2, 2))  # the reload broke the tie

    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model), reload_weights=reload_weights,
                             vllm_config=None)
    backend = ReloadVLLMGeneration.__new__(ReloadVLLMGeneration)
    backend.mode, backend.enable_sleep_mode, backend.num_weight_syncs = "colocate", False, 0
    backend.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker)),
                                  reset_prefix_cache=MagicMock())
    backend._iter_named_params = lambda: iter([("model.embed_tokens.weight", torch.full((2, 2), 3.0))])
    backend.sync_weights()
    assert set(received) == {"model.embed_tokens.weight"}
    assert model.head.weight is model.embed.weight  # re-tied to the input embedding
    backend.llm.reset_prefix_cache.assert_called_once()
    assert backend.num_weight_syncs == 1

