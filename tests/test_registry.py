"""The model registry: versions and lineage survive a restart, aliases move by promote/rollback with
a history, two processes promoting at once never lose an update, and registry:NAME@ALIAS resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneloop.cli.main import main
from tuneloop.errors import UserError
from tuneloop.models.loading import resolve_model
from tuneloop.paths import write_jsonl_atomic
from tuneloop.registry.lineage import diff_versions, file_sha256, version_from_run
from tuneloop.registry.store import Registry


@pytest.fixture()
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _three_versions(db, model_dir, tmp_path):
    train = tmp_path / "train.jsonl"
    write_jsonl_atomic(train, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    registry = Registry(db)
    for n in range(3):
        registry.register(version_from_run("support", model_dir, train_data=str(train), parent_version=n or None,
                                           eval_results={"rougeL": 0.1 * n}, source=f"test {n}"))
    return registry, train


def test_versions_lineage_and_aliases_survive_a_restart(db, tiny_model_dir, tmp_path):
    registry, train = _three_versions(db, tiny_model_dir, tmp_path)
    registry.promote("support", 1, actor="alice")
    registry.promote("support", 3, actor="bob", reason="better")
    registry.close()
    reopened = Registry(db)  # a new process would see the same
    versions = reopened.versions("support")
    assert [v.version for v in versions] == [1, 2, 3]
    v3 = reopened.get("support", "production")
    assert v3.version == 3 and v3.parent_version == 2 and v3.aliases == ["production"]
    assert v3.data_manifest_hash == file_sha256(train) and v3.path == str(tiny_model_dir.resolve())
    assert reopened.get("support", "archived").version == 1  # replaced in production
    moves = [(e["action"], e["alias"], e["from_version"], e["to_version"], e["actor"])
             for e in reopened.events("support") if e["alias"]]
    assert moves == [("promote", "production", None, 1, "alice"), ("promote", "production", 1, 3, "bob"),
                     ("promote", "archived", None, 1, "bob")]
    assert reopened.rollback("support", actor="carol") == (3, 1)
    assert reopened.get("support", "production").version == 1 and reopened.get("support", "archived").version == 3
    assert ("eval.rougeL", 0.0, 0.2) in diff_versions(reopened.get("support", 1), reopened.get("support", "v3"))
    reopened.close()


def test_compare_and_set_promotion_refuses_a_moved_alias(db, tiny_model_dir, tmp_path):
    registry, _ = _three_versions(db, tiny_model_dir, tmp_path)
    registry.promote("support", 1)
    with pytest.raises(UserError, match="someone moved it meanwhile"):
        registry.promote("support", 3, expected=2)
    assert registry.get("support", "production").version == 1
    with pytest.raises(UserError, match="no alias 'staging'"):
        registry.get("support", "staging")
    with pytest.raises(UserError, match="no model 'nope'"):
        registry.get("nope", "production")
    registry.close()


PROMOTER = """
import sys
from tuneloop.registry.store import Registry
registry = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    registry.promote("support", int(sys.argv[2]) if i % 2 == 0 else 1, actor="p" + sys.argv[2])
"""


def test_two_processes_promoting_at_once_keep_an_unbroken_history(db, tiny_model_dir, tmp_path):
    registry, _ = _three_versions(db, tiny_model_dir, tmp_path)
    registry.promote("support", 1)
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, db, str(v), "150"]) for v in (2, 3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    moves = [e for e in registry.events("support") if e["alias"] == "production"]
    # A lost update would show as a move whose "from" is not the previous move's "to".
    assert all(a["to_version"] == b["from_version"] for a, b in zip(moves, moves[1:]))
    assert moves[-1]["to_version"] == registry.get("support", "production").version
    assert {e["actor"] for e in moves} >= {"p2", "p3"}
    registry.close()


def test_registry_reference_resolves_wherever_a_model_is_accepted(db, tiny_model_dir, tmp_path, monkeypatch):
    registry, _ = _three_versions(db, tiny_model_dir, tmp_path)
    registry.promote("support", 2)
    monkeypatch.setenv("TUNELOOP_REGISTRY_DB", db)
    assert resolve_model("registry:support@production").path == tiny_model_dir.resolve()
    assert resolve_model("registry:support@3").path == tiny_model_dir.resolve()
    with pytest.raises(UserError, match="no version 9"):
        resolve_model("registry:support@9")
    with pytest.raises(UserError, match="not a registry reference"):
        resolve_model("registry:support")
    registry.close()


def test_registry_commands(db, tiny_model_dir, tmp_path, capsys):
    main(["registry", "register", "support", str(tiny_model_dir), "--alias", "production", "--db", db])
    main(["registry", "register", "support", str(tiny_model_dir), "--db", db])
    main(["registry", "promote", "support", "2", "--db", db, "--reason", "test"])
    main(["registry", "list", "--db", db])
    main(["registry", "rollback", "support", "--db", db])
    main(["registry", "show", "support", "--db", db])
    out = capsys.readouterr().out
    assert "support v1 (production)" in out and "support@production: v1 -> v2" in out
    assert "production=v1" not in out.split("support@production: v1 -> v2")[0]
    assert "archived=v1, production=v2" in out and "support@production: v2 -> v1 (rolled back)" in out
    assert "rollback  production: v2 -> v1" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["registry", "promote", "nope", "1", "--db", db])
    assert exit_info.value.code == 1
    assert "no model 'nope' in the registry" in capsys.readouterr().err


def test_registering_a_directory_that_is_no_model_is_refused_before_anything_is_written(db, tmp_path, capsys):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "todo.txt").write_text("train a model first")
    with pytest.raises(SystemExit) as exit_info:
        main(["registry", "register", "support", str(not_a_model), "--db", db])
    assert exit_info.value.code == 1
    assert "is a directory but not a model or a run" in capsys.readouterr().err
    registry = Registry(db)
    assert "support" not in registry.names()
    registry.close()


def test_a_registered_version_keeps_the_model_card_of_its_run(db, tiny_model_dir, tmp_path, capsys):
    from serve_support import make_adapter_run

    from tuneloop.export.model_card import build_model_card

    run = make_adapter_run(tiny_model_dir, tmp_path / "run", seed=1)
    main(["registry", "register", "support", str(run), "--alias", "production", "--db", db])
    capsys.readouterr()
    main(["registry", "card", "support", "--db", db])  # the production version by default
    card = capsys.readouterr().out
    assert card == build_model_card(run)
    assert card.startswith("---\n") and "base_model:" in card and "## Training" in card
    main(["registry", "card", "support", "v1", "--db", db])
    assert capsys.readouterr().out == card
    registry = Registry(db)  # a version added without a card (the Python API, or an older store)
    registry.register(version_from_run("support", tiny_model_dir, source="api"))
    registry.close()
    with pytest.raises(SystemExit) as exit_info:
        main(["registry", "card", "support", "2", "--db", db])
    assert exit_info.value.code == 1
    assert "support v2 has no model card" in capsys.readouterr().err
