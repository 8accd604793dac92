from dataclasses import dataclass, field
from typing import Literal

import pytest

from lmforge.config import apply_overrides, dump_yaml, from_dict, load_config, to_dict
from lmforge.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["cosine", "linear"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "run"
    seed: int = 0
    path: str | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_nested_build_and_roundtrip(tmp_path):
    cfg = from_dict(Outer, {"name": "x", "inner": {"lr": "3e-4", "steps": 5.0}})
    assert cfg.inner.lr == 3e-4 and cfg.inner.steps == 5 and cfg.inner.schedule == "cosine"
    dump_yaml(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml", Outer)
    assert again == cfg and to_dict(again)["inner"]["betas"] == [0.9, 0.95]


def test_overrides_parse_yaml_scalars():
    d = apply_overrides({"inner": {"lr": 1.0}}, ["inner.lr=2e-4", "flag=true", "path=null",
                                                 "inner.betas=[0.8, 0.9]", "name=a=b"])
    assert apply_overrides({}, ["name=ROMEO: hi"])["name"] == "ROMEO: hi"
    assert apply_overrides({}, ["m={a: 1}"])["m"] == {"a": 1}
    cfg = from_dict(Outer, d)
    assert cfg.inner.lr == 2e-4 and cfg.flag is True and cfg.path is None
    assert cfg.inner.betas == [0.8, 0.9] and cfg.name == "a=b"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"lrr": 1}}, "unknown config key 'inner.lrr'"),
        ({"seed": "abc"}, "config key 'seed': expected an integer, got 'abc'"),
        ({"seed": 1.5}, "config key 'seed': expected an integer"),
        ({"flag": "yes"}, "config key 'flag': expected true or false"),
        ({"inner": {"schedule": "step"}}, "expected one of 'cosine', 'linear'"),
        ({"inner": {"betas": 0.9}}, "config key 'inner.betas': expected a list"),
        ({"inner": 3}, "config key 'inner': expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml", Outer)
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", Outer)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml", Outer)
    (tmp_path / "evil.yaml").write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "evil.yaml", Outer)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
