"""An experiment's recipe (configs/experiments/NAME.yaml) read, its `scale=` applied and
checked before any run starts.

    spec = load_spec("pretrain-helps", ["scale=test", "seeds=2"])

The YAML names pretraining recipes (`recipe: roberta-shakespeare`) and fine-tuning
recipes by name and lists dotted overrides on top of them, so retuning a recipe changes
every experiment that uses it. Keys of the file:

    claim           the lecture's claim this experiment reproduces (one sentence)
    seeds           seeds per row (fine-tuning; pretraining too unless pretrain_seeds)
    pretrain_seeds  bodies pretrained per pretraining run (fine-tuning seed i uses body
                    i mod pretrain_seeds)
    tasks           the fine-tuning tasks (columns); a row may narrow them (`tasks:`)
    budget          pretraining train FLOPs per run: a number, or the name of a pretraining
                    run whose recipe (as it stands) sets it; max_steps follow from it
    fractions       pretrain each run at these fractions of the budget (a FLOPs curve)
    pretrain        NAME: {recipe, overrides, steps (x max_steps, default 1)}
    models          the table's rows: {name, body (a pretraining run; none: the
                    fine-tuning recipe's own body), init (pretrained | random),
                    overrides, tasks, recipes ({task: fine-tuning recipe})}
    finetune        overrides for every fine-tuning run
    compare         [[row A, row B], ...]: differences the report calls real or not
    table           finetune | pretrain (val loss vs size: a power law) | peft
    columns         pretraining summary keys shown as columns (e.g. val_loss)
    isolate         run each fine-tuning run in its own process (its own peak memory)
    scales          NAME: keys above to replace, and `pretrain` / `finetune` override
                    lists (every run), `runs` ({pretraining run: overrides}), `rows`
                    ({row: fine-tuning overrides}), `task_overrides` ({task: overrides})
                    to add; `default` is used when no scale= is given
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import read_yaml
from ..errors import ConfigError

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "experiments"
DEFAULT_SCALE = "default"
# CLI keys of `lmforge experiment NAME key=value ...`
CLI_KEYS = ("scale", "seeds", "pretrain_seeds", "tasks", "out", "jobs")
TABLES = ("finetune", "pretrain", "peft")
# The fine-tuning recipe of a task for a body of each architecture (a row's `recipes:`
# may name others); a task missing here for an architecture is one it cannot do.
TASK_RECIPES = {
    "rotten-tomatoes": {"encoder": "rotten-tomatoes-bert", "decoder": "rotten-tomatoes-gpt2",
                        "seq2seq": "rotten-tomatoes-bart", "xlnet": "rotten-tomatoes-xlnet"},
    "wnut16": {"encoder": "wnut16-bert", "decoder": "wnut16-gpt2", "seq2seq": "wnut16-bart",
               "xlnet": "wnut16-bert"},
    "debian-summaries": {"decoder": "debian-summaries-gpt2", "seq2seq": "debian-summaries-bart"},
    "debian-match": {"encoder": "debian-match-bert", "decoder": "debian-match-gpt2",
                     "seq2seq": "debian-match-bart"},
}


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


@dataclass
class PretrainRun:
    """One pretraining run of the experiment (before seeds): recipe + overrides."""

    name: str
    recipe: str
    overrides: list[str]
    steps: float = 1.0  # x the recipe's max_steps (ignored under a FLOPs budget)
    fraction: float = 1.0  # of the budget
    base: str = ""  # the pretraining entry it comes from (fractions)


@dataclass
class Row:
    """One row of the table: a body (pretrained, random init, or the recipe's own)
    fine-tuned on `tasks`."""

    name: str
    body: str | None
    init: str
    overrides: list[str]
    tasks: list[str]
    recipes: dict[str, str]
    fraction: float = 1.0


@dataclass
class Spec:
    name: str
    scale: str
    claim: str
    seeds: int
    pretrain_seeds: int
    tasks: list[str]
    budget: float | str | None
    pretrain: list[PretrainRun]
    rows: list[Row]
    finetune: list[str]
    pretrain_overrides: list[str]
    task_overrides: dict[str, list[str]]
    compare: list[list[str]]
    table: str
    columns: list[str]
    isolate: bool
    out: Path
    fractions: list[float] = field(default_factory=lambda: [1.0])
    jobs: int = 1  # runs at a time, each in its own process (1: one after another, in-process)


def _list(value, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"experiment key '{key}': expected a list, got {value!r}")
    return [str(v) for v in value]


def find(name: str) -> Path:
    """The experiment file of `name` (or a path to one); ConfigError listing the names."""
    path = Path(name)
    if path.suffix == ".yaml" and path.is_file():
        return path
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown experiment '{name}' (experiments: {', '.join(names())})")
    return path


def parse_cli(overrides: list[str]) -> dict:
    """`key=value` arguments of `lmforge experiment` (YAML values)."""
    out = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in CLI_KEYS:
            raise ConfigError(f"experiment argument '{item}': expected key=value with key one "
                              f"of {', '.join(CLI_KEYS)}")
        out[key] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def load_spec(name: str, overrides: list[str] = (), runs_root: str | Path = "runs") -> Spec:
    """The experiment `name` at the scale the overrides pick, every check done."""
    path = find(name)
    name = path.stem
    cli = parse_cli(list(overrides))
    data = read_yaml(path)
    scales = data.pop("scales", None) or {}
    scale = str(cli.pop("scale", DEFAULT_SCALE))
    if scale not in scales and not (scale == DEFAULT_SCALE and not scales):
        raise ConfigError(f"scale={scale}: experiment {name} has no such scale "
                          f"(scales: {', '.join(scales)})")
    patch = copy.deepcopy(scales.get(scale) or {})
    add = {k: patch.pop(k, None)
           for k in ("pretrain", "finetune", "runs", "rows", "task_overrides")}
    for key, value in patch.items():
        data[key] = value
    out = Path(cli.pop("out", None) or Path(runs_root) / "experiments" / name)
    jobs = cli.pop("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}: expected an integer >= 1 (runs at a time)")
    data.update(cli)
    known = {"claim", "seeds", "pretrain_seeds", "tasks", "budget", "fractions", "pretrain",
             "models", "finetune", "compare", "table", "columns", "isolate"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown experiment key '{unknown[0]}' "
                          f"(known: {', '.join(sorted(known))})")
    per_run = add["runs"] or {}
    seeds = data.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r}: expected an integer >= 1")
    pseeds = data.get("pretrain_seeds", seeds)
    if not isinstance(pseeds, int) or not 1 <= pseeds:
        raise ConfigError(f"pretrain_seeds={pseeds!r}: expected an integer >= 1")
    pseeds = min(pseeds, seeds)
    fractions = [float(f) for f in data.get("fractions") or [1.0]]
    budget = data.get("budget")
    entries = data.get("pretrain") or {}
    if budget is not None and not isinstance(budget, (int, float)) and budget not in entries:
        raise ConfigError(f"experiment key 'budget': a number of FLOPs or a pretraining run "
                          f"({', '.join(entries)}), got {budget!r}")
    pretrain = []
    for pname, e in entries.items():
        if not isinstance(e, dict) or "recipe" not in e:
            raise ConfigError(f"{path}: pretrain.{pname} needs a recipe")
        for f in (fractions if budget is not None else [1.0]):
            pretrain.append(PretrainRun(
                _run_name(pname, f, fractions), str(e["recipe"]),
                _list(e.get("overrides"), f"pretrain.{pname}.overrides")
                + _list(per_run.get(pname), f"scales.{scale}.runs.{pname}"),
                float(e.get("steps", 1.0)), f, pname))
    tasks = _list(data.get("tasks"), "tasks")
    rows = []
    for r in data.get("models") or []:
        body = r.get("body")
        if body is not None and body not in entries:
            raise ConfigError(f"{path}: row {r.get('name')!r}: body {body!r} is not a "
                              f"pretraining run ({', '.join(entries)})")
        # a row's own tasks, of the experiment's (which a scale or the command line set)
        row_tasks = [t for t in _list(r.get("tasks"), "models.tasks") or tasks if t in tasks]
        if "tasks" in cli:  # the command line's tasks replace every row's
            row_tasks = tasks
        init = r.get("init", "pretrained")
        if init not in ("pretrained", "random"):
            raise ConfigError(f"{path}: row {r.get('name')!r}: init is pretrained or random")
        for f in (fractions if body is not None and budget is not None else [1.0]):
            label = str(r["name"]) if len(fractions) == 1 or body is None or budget is None \
                else f"{r['name']} ({f:g}x FLOPs)"
            rows.append(Row(label, None if body is None else _run_name(body, f, fractions),
                            init, _list(r.get("overrides"), "models.overrides")
                            + _list((add["rows"] or {}).get(r["name"]),
                                    f"scales.{scale}.rows"),
                            row_tasks, dict(r.get("recipes") or {}), f))
    table = data.get("table", "finetune")
    if table not in TABLES:
        raise ConfigError(f"{path}: table is one of {', '.join(TABLES)}, got {table!r}")
    spec = Spec(
        name=name, scale=scale, claim=str(data.get("claim", "")), seeds=seeds,
        pretrain_seeds=pseeds, tasks=tasks, budget=budget, pretrain=pretrain, rows=rows,
        finetune=_list(data.get("finetune"), "finetune") + _list(add["finetune"], "finetune"),
        pretrain_overrides=_list(add["pretrain"], "pretrain"),
        task_overrides={t: _list(v, f"task_overrides.{t}")
                        for t, v in (add["task_overrides"] or {}).items()},
        compare=[list(map(str, c)) for c in data.get("compare") or []],
        table=table, columns=_list(data.get("columns"), "columns"),
        isolate=bool(data.get("isolate", False)), out=out, fractions=fractions,
        jobs=jobs)
    check_tasks(spec)
    return spec


def _run_name(name: str, fraction: float, fractions: list[float]) -> str:
    return name if len(fractions) == 1 else f"{name}-f{fraction:g}"


def arch_of(recipe: str, overrides: list[str]) -> str:
    """The architecture (decoder / encoder / seq2seq) a pretraining recipe builds."""
    from ..config import apply_overrides, from_dict
    from ..models.config import resolve_model_config
    from ..recipes import resolve
    from ..training.config import RunConfig

    cfg = from_dict(RunConfig, apply_overrides(read_yaml(resolve(recipe)), overrides))
    return resolve_model_config(cfg.model, cfg.tokenizer.vocab_size).arch


def check_tasks(spec: Spec) -> None:
    """Every (row, task) has a fine-tuning recipe its body's architecture can run:
    a task an architecture cannot do is one line, before any run starts."""
    from ..tasks import get_task
    from ..tasks.modes import check_body

    bodies = {p.name: p for p in spec.pretrain}
    for row in spec.rows:
        arch = None
        if row.body is not None:
            p = bodies[row.body]
            arch = arch_of(p.recipe, p.overrides + spec.pretrain_overrides)
        for task in row.tasks:
            t = get_task(task)  # an unknown task: ConfigError naming the known ones
            try:
                check_body(t.type, arch)
            except ConfigError as e:
                raise ConfigError(f"experiment {spec.name}, row '{row.name}' ({arch}), task "
                                  f"{task}: {e}") from None
            if task not in row.recipes and arch is not None \
                    and arch not in TASK_RECIPES.get(task, {}):
                raise ConfigError(f"experiment {spec.name}, row '{row.name}': no fine-tuning "
                                  f"recipe for task {task} on a {arch} body; name one in the "
                                  "row's recipes")
            if task not in row.recipes and arch is None:
                raise ConfigError(f"experiment {spec.name}, row '{row.name}': a row without "
                                  f"a body names its recipe for {task} (recipes:)")
