"""manifest.json that JSON itself cannot read (issue 14, item 5): arrays nested 100,000 deep, alone or
inside an otherwise valid manifest (RecursionError in json), and an integer of more than 4,300 digits
(ValueError from the int conversion limit). `vae serve` and `vae verify`, as real processes, refuse
each with one line on stderr and exit 2, like every other unreadable manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rel_helpers import ROOT, child_env

DEEP = "[" * 100_000 + "]" * 100_000


def _deep_alone(valid: str) -> str:
    return DEEP


def _deep_inside(valid: str) -> str:
    return valid.rstrip().removesuffix("}") + f', "extra": {DEEP}}}'


def _huge_int(valid: str) -> str:
    m = json.loads(valid)
    return json.dumps(m).replace(f'"latent_dim": {m["latent_dim"]},', '"latent_dim": ' + "7" * 4301 + ",")


CASES: list[tuple[str, Callable[[str], str], str]] = [
    ("nested-alone", _deep_alone, "nested too deeply"),
    ("nested-inside-valid", _deep_inside, "nested too deeply"),
    ("integer-4301-digits", _huge_int, "4300 digits"),
]


# What the installed `vae` script runs (`python -m vae_cli.main` adds a runpy warning line to stderr).
VAE = [sys.executable, "-c", "import sys; from vae_cli.main import main; sys.exit(main())"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VAE, *args], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("case, damage, phrase", CASES, ids=[c[0] for c in CASES])
def test_unreadable_manifest_json_is_one_line_exit_2(tiny_model_dir: Path, tmp_path: Path, case: str,
                                                     damage: Callable[[str], str], phrase: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    path = model / "manifest.json"
    path.write_text(damage(path.read_text()))
    serve = _run("serve", "--model-dir", str(model), "--host", "127.0.0.1", "--port", "0",
                 "--metrics-port", "0", "--log-level", "ERROR")
    verify = _run("verify", str(model))
    for name, proc in (("serve", serve), ("verify", verify)):
        err = proc.stderr.strip()
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert "\n" not in err and "Traceback" not in err, (name, err[-2000:])
        assert f"{path}: not valid JSON" in err and phrase in err, (name, err)
    assert serve.stderr.startswith("vae serve: refusing to start:")
    assert verify.stderr.startswith("vae verify: ")
