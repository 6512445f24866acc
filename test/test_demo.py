"""The main job runs end to end: checkpoint, four node processes, commands measured from outside."""

from pathlib import Path

from sage_hl_ros.tools.demo import run_demo


def test_quick_demo_runs_the_stack(tmp_path: Path, capsys):
    rc = run_demo(duration_s=3.0, quick=True, workdir=tmp_path)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "report.md").read_text().startswith("# sage_hl_ros demo")
    line = [x for x in out.splitlines() if x.startswith("demo_runtime: ")][-1]
    values = dict(kv.split("=") for kv in line.split(": ", 1)[1].split())
    assert float(values["cmd_hz"]) > 50, line  # commands flowed (rate is the benchmark's business)
    assert float(values["latent_hz"]) > 3, line
