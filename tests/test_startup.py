"""Django starts light: every manage.py command (migrate, shell, a deployment's set-up steps) and a web
process before its model loads import neither torch nor pymilvus; they load with the model bundle or the
first index client. Tests and deployments run many such short processes."""
import subprocess
import sys

from tests.stack import ROOT

HEAVY = ("torch", "pymilvus", "open_clip", "transformers")


def test_a_management_command_imports_no_model_or_index_library():
    probe = ("import sys, django.urls; django.urls.resolve('/api/'); "
             f"print(*[m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-v", "0", "-c", probe], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
