"""Apply a search's winning recipe to this site's full data, locally (``autodp site process``).

The recipe passes the same checks as a task from the coordinator before any data is read: each operator
installed, allowed by this site's policy, its parameters within the policy's bounds, and runnable here
(an LLM operator needs a site-local LLM). It then runs through the same executor as a task, but on every
row (``sample_rate_permille=1000``: no DPS sampling) and, as in the search, on the rows the screening
model marks noisy only, unless screening is switched off.

The prefix cache is off for this run: the search's cached prefixes were computed on sampled subsets (other
cache keys), so nothing could be reused, and storing full-data intermediates would evict the search's
entries from the size-bounded cache. A re-run simply recomputes.

The processed dataset is written where the user asks (it stays inside the hospital), atomically. Logs
and the summary hold counts and times only; errors name operators, parameters and columns, never data.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protos.recipe import Recipe
from protos.views import EvalSettings, EvaluatorKind, Metric, Strategy, Task
from site_agent.config import SiteConfig
from site_agent.errors import DataError, OperatorError
from site_agent.operators.base import Batch, StepStats
from site_agent.operators.registry import registered_operators
from site_agent.policy import Policy, apply_policy_defaults, check_task, load_policy

__all__ = ["OUTPUT_SUFFIXES", "ProcessSummary", "RecipeRefused", "check_recipe", "process_dataset"]

log = logging.getLogger("autodp.site")

OUTPUT_SUFFIXES = (".jsonl", ".parquet", ".csv")


class RecipeRefused(OperatorError):
    """The recipe cannot run at this site: an operator is unknown, not allowed, out of bounds or not
    runnable here. The message names the step and the operator."""


@dataclass(frozen=True)
class ProcessSummary:
    """What a run did, in counts and seconds only."""

    rows_in: int
    rows_out: int
    targets: int  # rows the strategy was applied to (the screened-noisy rows, or every row)
    untouched: int  # rows screening marked clean: passed through as they were
    screened: bool
    steps: tuple[StepStats, ...]
    seconds: float
    screening_requested: bool  # by the recipe or the caller; a site without a screening model cannot
    strategy_key: str  # the recipe's, as in its header (before this site's policy defaults)

    def lines(self) -> list[str]:
        if self.screened:
            scope = f"{self.targets} marked noisy by screening, {self.untouched} clean left as they were"
        elif self.screening_requested:
            scope = "this site has no screening model: every row processed"
        else:
            scope = "screening off: every row processed"
        out = [f"rows in {self.rows_in}, rows out {self.rows_out} ({scope})"]
        for i, s in enumerate(self.steps):
            out.append(f"  step {i} {s.op}: kept {s.kept}, dropped {s.dropped}, changed {s.changed}, "
                       f"{s.seconds:.2f} s")
        out.append(f"strategy {self.strategy_key}, {self.seconds:.1f} s in all")
        return out


def _not_runnable(cfg: SiteConfig, strategy: Strategy) -> list[str]:
    provides = set()
    if cfg.embedder is not None:
        provides.add("embedder")
        if cfg.screening is not None:
            provides.add("screener")
    if cfg.llm is not None:
        provides.add("llm")
    ops = registered_operators()
    out = []
    for i, call in enumerate(strategy.calls):
        missing = ops[call.op].requires - provides
        if missing:
            out.append(f"step {i} ({call.op}): needs {sorted(missing)}, not configured at this site")
    return out


def check_recipe(strategy: Strategy, policy: Policy, cfg: SiteConfig) -> list[str]:
    """Why ``strategy`` (policy defaults applied) cannot run here; empty when it can. Names steps and
    operators only."""
    registered = registered_operators()
    unknown = [f"step {i} ({c.op}): operator not installed at this site"
               for i, c in enumerate(strategy.calls) if c.op not in registered]
    if unknown:
        return unknown
    # The same check as a task's. Its settings part does not apply to a local run: a check of the empty
    # strategy with the same settings gives exactly those problems, which are then set aside.
    settings = EvalSettings(evaluator=EvaluatorKind.QUALITY_PROXY, metric=Metric.QUALITY_PROXY,
                            sample_rate_permille=1000)

    def task(s: Strategy) -> Task:
        return Task(task_id="recipe", search_id="recipe", strategy=s, settings=settings)

    settings_only = {p.reason for p in check_task(task(Strategy()), policy)}
    problems = [p.reason for p in check_task(task(strategy), policy) if p.reason not in settings_only]
    return problems or _not_runnable(cfg, strategy)


def _prepare_config(cfg: SiteConfig, strategy: Strategy, use_screening: bool) -> SiteConfig:
    """``cfg`` without the models this run does not need (no sampling here, so the embedder serves only
    screening and embedding-based operators): loading or training them would only cost time."""
    ops = registered_operators()
    needs = set().union(*(ops[c.op].requires for c in strategy.calls))
    update: dict[str, object] = {}
    if not use_screening and "screener" not in needs:
        update["screening"] = None
        if "embedder" not in needs:
            update["embedder"] = None
    if cfg.llm is not None and "llm" not in needs:
        update["llm"] = None
    return cfg.model_copy(update=update) if update else cfg


def _write(batch: Batch, output: Path) -> None:
    """Write ``batch`` to ``output`` (format by extension) through a temporary file and a rename."""
    import datasets

    suffix = output.suffix.lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bar()
    try:
        ds = datasets.Dataset.from_dict(batch)
        if suffix == ".jsonl":
            ds.to_json(str(tmp), lines=True, force_ascii=False)
        elif suffix == ".parquet":
            ds.to_parquet(str(tmp))
        else:
            ds.to_csv(str(tmp), index=False)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except OSError as e:
        raise DataError(f"cannot write the processed dataset ({type(e).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
        if bars_were_on:
            datasets.enable_progress_bar()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def process_dataset(cfg: SiteConfig, recipe: Recipe, output: Path, *, use_screening: bool | None = None,
                    overwrite: bool = False, progress: Callable[[str], None] | None = None) -> ProcessSummary:
    """Apply ``recipe`` to the site's full data and write the result to ``output`` (.jsonl, .parquet or
    .csv). ``use_screening`` None follows the recipe. Raises RecipeRefused before touching any data when
    the recipe may not run here; DataError/ConfigError for bad files; OperatorError when a step fails."""
    from site_agent.pipeline import execute
    from site_agent.resources import prepare

    say = progress or (lambda _msg: None)
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"unsupported output type '{output.suffix or '(none)'}': use one of "
                        f"{', '.join(OUTPUT_SUFFIXES)}")
    if _same_file(output, cfg.data.path):
        raise DataError("the output would overwrite the site's own data file: choose another path")
    if output.exists() and not overwrite:
        raise DataError("the output file already exists (overwrite it with --force)")
    screening = recipe.settings.use_screening if use_screening is None else use_screening

    policy = load_policy(cfg.policy)
    strategy = apply_policy_defaults(recipe.to_strategy(), policy)
    problems = check_recipe(strategy, policy, cfg)
    if problems:
        raise RecipeRefused("recipe refused by this site: " + "; ".join(problems))

    t0 = time.perf_counter()
    say("loading the site's data and models")
    resources = prepare(_prepare_config(cfg, strategy, screening))
    try:
        settings = EvalSettings(sample_rate_permille=1000, use_screening=screening, use_cache=False)
        say(f"running {len(strategy.calls)} step(s) on {len(resources.data['instruction'])} rows")
        result = execute(resources.data, strategy, settings, context=resources.context(settings.seed),
                         embedder=resources.embedder, screener=resources.screener, cache=None,
                         embedding_cache=resources.embedding_cache)
    finally:
        resources.close()
    # back to the site's own column names, so the output reads like the input
    batch = {cfg.data.instruction_field: result.batch["instruction"], cfg.data.answer_field: result.batch["answer"]}
    say(f"writing {result.n_output} rows")
    _write(batch, output)
    summary = ProcessSummary(
        rows_in=result.n_input, rows_out=result.n_output, targets=result.n_targets, untouched=result.n_clean,
        screened=result.screened, screening_requested=screening, steps=result.steps,
        seconds=time.perf_counter() - t0,
        strategy_key=recipe.to_strategy().key)
    log.info("recipe %s applied: %d rows in, %d out, %d steps", summary.strategy_key, summary.rows_in,
             summary.rows_out, len(summary.steps))
    return summary
