import os
from functools import partial

import pytest
from conftest import run_train

pytestmark = pytest.mark.slow  # each test runs the command line in a new process


def env_without_token(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), **extra}


run_push = partial(run_train, module="train.push_to_hub", timeout=120)


def test_dry_run_lists_the_model_folder(model_folder, tmp_path):
    result = run_push("--model", model_folder, "--repo-id", "someone/skinlesion", "--dry-run",
                      env=env_without_token(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "would upload to" in result.stdout and "someone/skinlesion" in result.stdout
    assert "model.safetensors" in result.stdout and "config.json" in result.stdout


def test_missing_token_is_a_clear_error(model_folder, tmp_path):
    result = run_push("--model", model_folder, "--repo-id", "someone/skinlesion", env=env_without_token(tmp_path))
    assert result.returncode == 2
    assert "no Hugging Face token: set HF_TOKEN" in result.stderr


def test_unreachable_hub_is_a_clear_error(model_folder, tmp_path):
    env = env_without_token(tmp_path, HF_TOKEN="hf_dummy", HF_HUB_OFFLINE="1")
    result = run_push("--model", model_folder, "--repo-id", "someone/skinlesion", env=env)
    assert result.returncode == 3
    assert "cannot be reached from this machine" in result.stderr and "nothing was uploaded" in result.stderr


def test_bad_folder_and_repo_id(model_folder, tmp_path):
    env = env_without_token(tmp_path)
    assert "model folder not found" in run_push("--model", tmp_path / "x", "--repo-id", "a/b", env=env).stderr
    bad = run_push("--model", model_folder, "--repo-id", "no-slash", env=env)
    assert bad.returncode == 2 and "must be USER/NAME" in bad.stderr
