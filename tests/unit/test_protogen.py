import shutil

from services.common import protogen


def test_committed_stubs_match_the_protos():
    assert protogen.check() == 0


def test_check_fails_when_a_proto_changes(tmp_path, monkeypatch):
    protos = tmp_path / "protos"
    shutil.copytree(protogen.PROTO_ROOT, protos)
    common = protos / "hfx" / "v1" / "common.proto"
    common.write_text(common.read_text().replace("bool draining = 8;", "bool draining = 8;\n  int32 extra = 99;"))
    monkeypatch.setattr(protogen, "PROTO_ROOT", protos)
    assert protogen.check() == 1
