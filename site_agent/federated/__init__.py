"""Federated LoRA training at a site, after a search (off by default; see docs/federated-training.md).

- :mod:`.settings`    the ``federated_training:`` section of the site YAML
- :mod:`.trainer`     the local LoRA model: load, take the global adapter, train a round, score held-out loss
- :mod:`.client_app`  the Flower ClientApp: checks every message, trains, audits each exchange, charges DP-SGD
- :mod:`.node`        runs a Flower SuperNode and feeds its tasks to this site's own ClientApp (never code
                      from the coordinator)
- :mod:`.cli`         ``python -m site_agent.federated --config site.yaml --recipe recipe.yaml``

Heavy dependencies (torch, peft, flwr) are imported by the modules that use them, not here.
"""
