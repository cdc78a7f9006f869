"""The example configs in deploy/examples are valid for the code as it is."""

from pathlib import Path

from coordinator.config import load_config as load_coordinator_config
from site_agent.config import load_config as load_site_config
from site_agent.policy import load_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_examples_validate() -> None:
    coord = load_coordinator_config(EXAMPLES / "coordinator.yaml")
    assert coord.search is not None and coord.sites == ["hospital-a", "hospital-b"]
    site = load_site_config(EXAMPLES / "site.yaml")
    assert site.policy == (EXAMPLES / "policy.yaml").resolve()
    assert load_policy(site.policy).allowed_operators
