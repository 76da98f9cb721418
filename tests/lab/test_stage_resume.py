"""A demo stage resumes a cut-off run of its config and starts over for another (never mixing the two)."""
import pytest

from ramm_lab.demo import Stage


class _Killed(BaseException):
    pass


def test_stage_resumes_same_config_and_starts_over_for_another(tmp_path):
    def killed(out):
        (out / "partial").write_text("half a memory")
        raise _Killed

    with pytest.raises(_Killed):
        Stage(tmp_path, "memory", {"encoder": "a"}, lambda s: None).run(killed)
    seen = []
    Stage(tmp_path, "memory", {"encoder": "a"}, lambda s: None).run(lambda out: seen.append((out / "partial").exists()) or {})
    assert seen == [True]  # the same config resumes from what the killed run left
    with pytest.raises(_Killed):
        Stage(tmp_path, "memory", {"encoder": "b"}, lambda s: None).run(killed)
    Stage(tmp_path, "memory", {"encoder": "c"}, lambda s: None).run(lambda out: seen.append((out / "partial").exists()) or {})
    assert seen == [True, False]  # another config never sees the old one's files
