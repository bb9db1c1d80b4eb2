"""Colocated vLLM on CPU (`vllm_mode="colocate"`, `vllm_weight_sync="reload"`): GADTrainer trains with the real
in-process engine and the engine serves the updated student. Run in a child process: vLLM initialises
torch.distributed and its engine in the process that builds it. Skipped where vLLM can't be imported."""

import os
import subprocess
import sys
import textwrap

import pytest
from trl.import_utils import is_vllm_available

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


def test_colocated_reload_trains_and_the_engine_serves_the_updated_student(tiny_model_dir, tmp_path):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", SCRIPT, tiny_model_dir, str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stderr[-4000:]
    values = dict(line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["SYNCS"], ["MOVED"],
                                                                                              ["SERVED_DIFF"]))
    assert int(values["SYNCS"]) == 3
    # The engine holds the trained weights (to its bfloat16 rounding), not the initial ones the student moved from.
    assert float(values["SERVED_DIFF"]) < float(values["MOVED"]) / 10, values
