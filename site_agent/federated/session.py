"""Everything a site prepares before it joins a federated run, in one place: the recipe applied to its full
data (or an already processed file), its held-out set, the base model, DP-SGD and the privacy ledger,
the audit log (``<state_dir>/federated-audit.log``, signed with the site's audit key) and the SuperNode.

Checks come first and touch no data: the recipe must parse and pass this site's policy (the same check
as ``autodp site process``), DP-SGD asked for needs ``privacy.dp_sgd``, a held-out set must be
configured. The audit log has its own file so that the site agent (which holds ``audit.log``) may keep
running; both are signed with the same key and verify with ``autodp audit verify``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from protos.audit import AuditLog, load_signing_key
from protos.errors import ConfigError
from protos.recipe import load_recipe
from site_agent.config import SiteConfig
from site_agent.data.loading import load_pairs
from site_agent.errors import DataError
from site_agent.evaluation.dp import DPConfig
from site_agent.federated.client_app import SiteSession, make_client_app
from site_agent.federated.node import SiteNode
from site_agent.federated.trainer import TrainerOptions
from site_agent.operators.base import Batch
from site_agent.operators.base import batch_size as n_rows

__all__ = ["AUDIT_LOG_NAME", "open_session"]

log = logging.getLogger("autodp.site.federated")
AUDIT_LOG_NAME = "federated-audit.log"


def _processed_rows(cfg: SiteConfig, recipe_path: Path, processed: Path | None, work: Path,
                    say: Callable[[str], None]) -> tuple[str, Batch]:
    from site_agent.process import process_dataset

    recipe = load_recipe(recipe_path)
    if processed is None:
        out = work / f"processed-{recipe.search_id}.jsonl"
        summary = process_dataset(cfg, recipe, out, overwrite=True, progress=say)
        for line in summary.lines():
            say(line)
        processed = out
    batch = load_pairs(processed, cfg.data.instruction_field, cfg.data.answer_field)
    if n_rows(batch) == 0:
        raise DataError("the processed dataset has no rows")
    return recipe.search_id, batch


def _warm_up() -> None:
    """Import the training stack now rather than when the first round is waiting for it."""
    import flwr.app  # noqa: F401
    import peft  # noqa: F401  (torch and transformers come with it)


@contextmanager
def open_session(cfg: SiteConfig, recipe: Path, *, processed: Path | None = None, output: Path | None = None,
                 progress: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[SiteSession, Callable[[str], SiteNode]]]:
    """Prepare the site's session; yields it and a factory of the SiteNode that serves it (given the
    SuperLink address). Closes the audit log and the ledger on exit."""
    say = progress or (lambda _m: None)
    fed = cfg.federated_training
    if cfg.eval_data is None:
        raise ConfigError("federated training needs the site's held-out set: set eval_data in the site config")
    if fed.dp_sgd and cfg.privacy.dp_sgd is None:
        raise ConfigError("federated_training.dp_sgd needs a privacy.dp_sgd section (noise or target epsilon)")
    work = cfg.state_dir / "federated"
    work.mkdir(parents=True, exist_ok=True)
    model_path = fed.model_path
    if model_path is None:
        from protos.bundled_models import smollm2_folder

        model_path = smollm2_folder()
    search_id, train_batch = _processed_rows(cfg, recipe, processed, work, say)
    _warm_up()
    eval_batch = load_pairs(cfg.eval_data.path, cfg.eval_data.instruction_field, cfg.eval_data.answer_field)
    dp = DPConfig(**cfg.privacy.dp_sgd.model_dump()) if fed.dp_sgd and cfg.privacy.dp_sgd is not None else None
    opts = TrainerOptions(model_path=model_path, device=fed.device, dtype=fed.dtype, threads=fed.threads,
                          eval_batch_size=fed.eval_batch_size, dp=dp, secret_dir=work)
    with ExitStack() as stack:
        ledger = None
        if dp is not None:
            from site_agent.privacy import PrivacyLedger

            ledger = stack.enter_context(PrivacyLedger(cfg.state_dir / "privacy.db", cfg.privacy))
        audit = stack.enter_context(AuditLog.open(cfg.state_dir / AUDIT_LOG_NAME, load_signing_key(cfg.audit_key),
                                                  "site", cfg.site_id))
        session = SiteSession(site_id=cfg.site_id, coordinator_party=cfg.coordinator_party, search_id=search_id,
                              train_batch=train_batch, eval_batch=eval_batch, settings=fed, trainer_options=opts,
                              audit=audit, output_dir=output or work, privacy=cfg.privacy, ledger=ledger)
        client_app = make_client_app(session)
        say(f"ready: {n_rows(train_batch)} processed training rows, {n_rows(eval_batch)} held-out rows, "
            f"DP-SGD {'on' if dp else 'off'}")

        def node(superlink: str) -> SiteNode:
            return SiteNode(client_app, superlink=superlink, ca=cfg.tls.ca, tls_key=cfg.tls.key, work_dir=work,
                            done=lambda: session.done)

        yield session, node
