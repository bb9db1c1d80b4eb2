"""`gad_trl.vllm.serve` (`gad-trl vllm-serve`): the server command and its warnings."""

import pytest


def test_vllm_serve_warns_when_dev_mode_listens_beyond_loopback(capsys):
    from gad_trl.vllm.serve import serve_main

    serve_main(["--model", "m", "--dry-run"])
    assert "WARNING" not in capsys.readouterr().err
    serve_main(["--model", "m", "--host", "0.0.0.0", "--dry-run"])
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0" in err and "/collective_rpc" in err



def test_lora_weight_sync_serves_the_base_with_runtime_adapter_loading(capsys):
    from gad_trl.vllm.serve import LORA_ENV, WORKER_EXTENSION, build_command, build_parser, lora_rank_for, \
        server_env, suggested_command

    args, extra = build_parser().parse_known_args(["--model", "base", "--weight-sync", "lora", "--max-lora-rank", "32"])
    cmd = build_command(args, extra)
    assert "--weight-transfer-config" not in cmd and cmd[cmd.index("--worker-extension-cls") + 1] == WORKER_EXTENSION
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32" and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-loras") + 1] == "1"
    default = build_command(*build_parser().parse_known_args(["--model", "base", "--weight-sync", "lora"]))
    assert default[default.index("--max-lora-rank") + 1] == "64"
    assert server_env({}, cuda=True, weight_sync="lora") == {"VLLM_SERVER_DEV_MODE": "1", LORA_ENV: "1"}
    assert LORA_ENV not in server_env({}, cuda=True, weight_sync="reload")
    with pytest.raises(SystemExit, match="--max-lora-rank is for --weight-sync lora"):
        build_command(*build_parser().parse_known_args(["--model", "b", "--weight-sync", "reload", "--max-lora-rank", "8"]))
    with pytest.raises(SystemExit):  # not a rank vLLM accepts
        build_parser().parse_args(["--model", "b", "--max-lora-rank", "12"])
    capsys.readouterr()
    assert (lora_rank_for(1), lora_rank_for(12), lora_rank_for(64), lora_rank_for(300)) == (1, 16, 64, 320)
    with pytest.raises(ValueError, match="up to rank 512"):
        lora_rank_for(1024)
    line = suggested_command("base", "127.0.0.1", 8000, "lora", lora_rank=12)
    assert line.endswith("--weight-sync lora --max-lora-rank 16")
