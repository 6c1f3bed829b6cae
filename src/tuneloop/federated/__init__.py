"""Federated fine-tuning on Flower: one LoRA adapter trained by clients whose data never leaves them.

The server (``server.py``) holds the global adapter and runs FedAvg or FedProx; each client
(``client.py``) trains it on its own data with the normal training pieces (``local.py``) and sends
back only the adapter tensors and counts (``payload.py``). ``partition.py`` cuts one dataset into
client shares for the simulation, ``privacy.py`` adds differential privacy and its budget, and
``launch.py`` starts a simulation or a real server and client nodes. Flower is imported by these
modules, so nothing here is imported by ``tuneloop --help``.
"""
