"""`gad_trl.vllm.serve` (`gad-trl vllm-serve`): the server command and its warnings."""



















def test_vllm_serve_warns_when_dev_mode_listens_beyond_loopback(capsys):
    from gad_trl.vllm.serve import serve_main

    serve_main(["--model", "m", "--dry-run"])
    assert "WARNING" not in capsys.readouterr().err
    serve_main(["--model", "m", "--host", "0.0.0.0", "--dry-run"])
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0" in err and "/collective_rpc" in err

