"""The YAML recipes that ship with lmforge, by name.

The recipes live in the repository's `configs/` and ship inside the package as
`lmforge/configs/` (a link to it in a clone, real files in a wheel), so `pip install`
users have them too. A recipe's name is its path under configs/ without `.yaml`
(`gpt-shakespeare`, `tiny/gpt2`, `finetune/wnut16-bert`), or just the file's stem when
that is unique (`wnut16-bert`). `lmforge pretrain NAME` accepts a file or a name; a
path as the README writes it (`configs/tiny/gpt2.yaml`) resolves by name outside a clone.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from .atomic import write_text
from .errors import ConfigError

FOLDER = Path(__file__).resolve().parent / "configs"


def all_recipes() -> dict[str, Path]:
    """name -> file, sorted: `gpt-shakespeare`, `finetune/wnut16-bert`, `tiny/gpt2` ..."""
    return {p.relative_to(FOLDER).with_suffix("").as_posix(): p
            for p in sorted(FOLDER.rglob("*.yaml"))}


def describe(path: Path, width: int = 90) -> str:
    """A recipe's opening comment (what it is), cut to `width` characters."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):  # code, or an example command
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def find(name: str) -> Path | None:
    """The recipe called `name` (with or without `configs/` and `.yaml`), else None."""
    name = name.removeprefix("configs/").removesuffix(".yaml")
    recipes = all_recipes()
    if name in recipes:
        return recipes[name]
    by_stem = [p for key, p in recipes.items() if key.rsplit("/", 1)[-1] == name]
    return by_stem[0] if len(by_stem) == 1 else None


def resolve(config: str | Path) -> Path:
    """A config file as given, else the recipe of that name; ConfigError if neither."""
    path = Path(config)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a YAML file or a recipe name "
                          "(lmforge recipes list)")
    found = find(str(config))
    if found is None:
        raise _unknown(str(config), f"{config}: no such file, nor a recipe of that name")
    return found


def _unknown(name: str, what: str) -> ConfigError:
    close = difflib.get_close_matches(name.removesuffix(".yaml"), all_recipes(), n=1)
    return ConfigError(what + (f"; did you mean '{close[0]}'?" if close
                               else " (lmforge recipes list)"))


def copy(name: str, dest: str | Path) -> Path:
    """Copy a recipe to `dest` (a file, or a folder to put NAME.yaml in); never overwrite."""
    src = find(name)
    if src is None:
        raise _unknown(name, f"no recipe named '{name}'")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise ConfigError(f"{dest} exists; choose another name")
    write_text(dest, src.read_text())
    return dest
