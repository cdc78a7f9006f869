"""Federated LoRA training, the coordinator's side (``autodp train federated``; see docs/federated-training.md).

- :mod:`.strategy`    FedAvg over the adapter tensors, for the registered sites only, every exchange audited
- :mod:`.server_app`  the Flower ServerApp: the rounds, the final adapter to every site, the outputs
- :mod:`.launch`      starts Flower's SuperLink (TLS, node authentication), registers the sites' keys,
                      starts the run and serves it with this coordinator's own ServerApp

Heavy dependencies (flwr, safetensors) are imported by the modules that use them, not here.
"""
